#!/usr/bin/python3
"""A stand-in for a vendor daemon behind rsproxyd, for the systemd end-to-end suite.

It behaves like the backends of the socket-activation pattern: it binds its own port (it
knows nothing of LISTEN_FDS), takes a while to start, and exits by itself when idle.

  - sleeps --delay seconds before binding (a slow start: interpreter, config, JIT, ...);
  - binds --listen HOST:PORT and appends "bound <epoch ns> pid <pid> listen <addr>" to --log,
    so the suite can measure how long a client waited beyond the backend's own start;
  - answers GET / with 200 and a short body, GET /big with the file named by --big-file,
    and appends "request <epoch ns> <path>" to --log as each request reaches it;
  - exits 0 once no request has been in flight for --idle-exit seconds.

Every option also reads a BACKEND_* environment variable, so a systemd drop-in can tune a
unit's backend with Environment= lines and leave its ExecStart= alone.
"""

import argparse
import http.server
import os
import select
import shutil
import sys
import threading
import time


def env(name, default):
    return os.environ.get("BACKEND_" + name, default)


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--listen", default=env("LISTEN", "127.0.0.1:8081"), help="HOST:PORT to bind")
    p.add_argument("--delay", type=float, default=float(env("DELAY", "0.2")),
                   help="seconds to sleep before binding")
    p.add_argument("--idle-exit", type=float, default=float(env("IDLE_EXIT", "600")),
                   help="exit after this many seconds without a request in flight")
    p.add_argument("--log", default=env("LOG", ""), help="append one line per bind here")
    p.add_argument("--big-file", default=env("BIG_FILE", ""), help="file served at /big")
    return p.parse_args()


class Activity:
    """Connections in flight and when the last one ended, shared by the handler threads.
    A connection counts from its accept(), so one being parsed is not "idle"."""

    def __init__(self):
        self.lock = threading.Lock()
        self.in_flight = 0
        self.last_end = time.monotonic()

    def begin(self):
        with self.lock:
            self.in_flight += 1

    def end(self):
        with self.lock:
            self.in_flight -= 1
            self.last_end = time.monotonic()

    def idle_for(self):
        with self.lock:
            return 0.0 if self.in_flight else time.monotonic() - self.last_end


class EventLog:
    """Appends one line per event to --log (if given) and to stdout (the journal)."""

    def __init__(self, path):
        self.path = path
        self.lock = threading.Lock()

    def write(self, line):
        print(line, flush=True)
        if self.path:
            with self.lock, open(self.path, "a") as f:
                f.write(line + "\n")


def make_handler(activity, events, big_file):
    class Handler(http.server.BaseHTTPRequestHandler):
        # HTTP/1.0: one request per connection, so "idle" means "no connection in flight".
        protocol_version = "HTTP/1.0"

        def do_GET(self):
            events.write(f"request {time.time_ns()} {self.path}")
            try:
                if self.path == "/big" and big_file:
                    with open(big_file, "rb") as f:
                        size = os.fstat(f.fileno()).st_size
                        self.send_response(200)
                        self.send_header("Content-Type", "application/octet-stream")
                        self.send_header("Content-Length", str(size))
                        self.end_headers()
                        shutil.copyfileobj(f, self.wfile, 1 << 20)
                else:
                    body = f"hello from backend pid {os.getpid()}\n".encode()
                    self.send_response(200)
                    self.send_header("Content-Type", "text/plain")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
            except (BrokenPipeError, ConnectionResetError) as e:
                print(f"client went away: {e}", flush=True)

        def log_message(self, fmt, *args):
            print("access: " + fmt % args, flush=True)

    return Handler


class Server(http.server.ThreadingHTTPServer):
    # A real server's backlog (node uses 511); socketserver's default of 5 would drop SYNs
    # when 50 clients arrive at once and turn a cold start into a 1 s retransmit.
    request_queue_size = 512
    daemon_threads = True
    # How long handle_request() waits for a connection before the idle check runs again.
    timeout = 0.02

    def __init__(self, address, handler, activity):
        self.activity = activity
        super().__init__(address, handler)

    def process_request(self, request, client_address):
        # Runs in the accepting thread, before the handler thread exists.
        self.activity.begin()
        try:
            super().process_request(request, client_address)
        except Exception:
            self.activity.end()
            raise

    def shutdown_request(self, request):
        # Runs in the handler thread once the connection is done with.
        try:
            super().shutdown_request(request)
        finally:
            self.activity.end()

    def pending(self):
        """Whether a connection waits in the accept queue."""
        return bool(select.select([self.socket], [], [], 0)[0])


def main():
    args = parse_args()
    host, _, port = args.listen.rpartition(":")
    time.sleep(args.delay)  # the slow start being simulated, not a synchronisation
    events = EventLog(args.log)
    activity = Activity()
    handler = make_handler(activity, events, args.big_file)
    server = Server((host.strip("[]"), int(port)), handler, activity)
    activity.last_end = time.monotonic()  # idle counts from the bind
    events.write(f"bound {time.time_ns()} pid {os.getpid()} listen {args.listen}")
    # Accept and check for idleness in the same thread, and never leave with a connection
    # in the accept queue: an idle exit must not reset a client that already connected.
    while True:
        server.handle_request()
        idle = activity.idle_for()
        if idle >= args.idle_exit and not server.pending():
            break
    print(f"idle for {idle:.2f}s, exiting", flush=True)
    server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
