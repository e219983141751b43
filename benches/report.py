#!/usr/bin/env python3
"""Turn benches/compare.sh's raw results into results.md (tables) and chart.svg.

usage: report.py OUT_DIR   (reads raw.tsv, rss.tsv and machine.tsv from OUT_DIR)
Standard library only. The table shows the median over rounds of each workload and proxy.
"""

import csv
import math
import os
import statistics
import sys
from xml.sax.saxutils import escape

# (key, label, unit, higher is better)
WORKLOADS = [
    ("bulk", "Bulk, one stream (iperf3)", "Gbit/s", True),
    ("rr_1conn", "Small req/resp, 1 connection (redis-benchmark GET)", "req/s", True),
    ("rr_50conn", "Small req/resp, 50 connections (redis-benchmark GET)", "req/s", True),
    ("http_ka", "HTTP keep-alive, 50 connections (wrk, nginx)", "req/s", True),
    ("new_conn", "New connections, 50 clients (wrk, Connection: close)", "conn/s", True),
    ("new_conn_ab", "New connections, 20 clients (ab, no keep-alive)", "conn/s", True),
    ("cold_start", "Cold-start delay over the backend's bind (ssp: with the seed's guard)", "ms", False),
]
PROXY_ORDER = ["direct", "rsproxyd", "ssp", "haproxy"]
PEERS = ["direct", "ssp", "haproxy"]
COLOURS = {"direct": "#9e9e9e", "rsproxyd": "#d95f02", "ssp": "#1b9e77", "haproxy": "#7570b3"}
LABELS = {"direct": "direct", "rsproxyd": "rsproxyd", "ssp": "systemd-socket-proxyd", "haproxy": "HAProxy"}
# colours for rsproxyd's variants (rsproxyd:KEY=VALUE), in order of appearance
VARIANT_COLOURS = ["#e6ab02", "#66a61e", "#e7298a", "#a6761d", "#1f78b4", "#666666"]
# the proxy's CPU per unit of work: (workload, unit shown, factor from CPU s per work unit)
CPU_UNITS = {
    "bulk": ("ms per GB", 1e3 * 1e9),
    "rr_1conn": ("µs per request", 1e6),
    "rr_50conn": ("µs per request", 1e6),
    "http_ka": ("µs per request", 1e6),
    "new_conn": ("µs per connection", 1e6),
    "new_conn_ab": ("µs per connection", 1e6),
}


def proxy_label(p):
    return LABELS.get(p, p)


def read_tsv(path):
    if not os.path.exists(path):
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f, delimiter="\t"))


def number(text):
    try:
        v = float(text)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(v) else v


def fmt(v):
    if v is None:
        return "failed"
    if v >= 1000:
        return f"{v:,.0f}"
    if v >= 100:
        return f"{v:.0f}"
    if v >= 10:
        return f"{v:.1f}"
    return f"{v:.2f}"


def ratio(a, b):
    if a is None or b is None or b == 0:
        return None
    return a / b


def fmt_ratio(r):
    return "—" if r is None else f"{r:.2f}x"


def main(out):
    raw = read_tsv(os.path.join(out, "raw.tsv"))
    rss = read_tsv(os.path.join(out, "rss.tsv"))
    machine = {row[0]: row[1] for row in csv.reader(open(os.path.join(out, "machine.tsv")), delimiter="\t")} \
        if os.path.exists(os.path.join(out, "machine.tsv")) else {}

    rounds = {}  # (workload, proxy) -> [values per round, None for a failure]
    by_round = {}  # (workload, proxy) -> {round: value}
    for row in raw:
        rounds.setdefault((row["workload"], row["proxy"]), []).append(number(row["value"]))
        by_round.setdefault((row["workload"], row["proxy"]), {})[row["round"]] = number(row["value"])

    def paired(key, a, b):
        """Median over rounds of a's value over b's in the same round (both measured minutes
        apart at most, so a load change on the shared machine hits both)."""
        ra, rb = by_round.get((key, a), {}), by_round.get((key, b), {})
        qs = [ra[r] / rb[r] for r in ra if r in rb and ra[r] is not None and rb[r]]
        return statistics.median(qs) if qs else None
    proxies = [p for p in PROXY_ORDER if any(k[1] == p for k in rounds)]
    for row in raw:  # rsproxyd's variants, after the four, in the order they ran
        if row["proxy"] not in proxies:
            proxies.append(row["proxy"])
    for i, p in enumerate(p for p in proxies if p not in COLOURS):
        COLOURS[p] = VARIANT_COLOURS[i % len(VARIANT_COLOURS)]

    # the proxy's CPU seconds per unit of work, per round (older raw.tsv files have none)
    cpu_rounds = {}
    for row in raw:
        c, n = number(row.get("cpu_s")), number(row.get("work"))
        if row["workload"] in CPU_UNITS and c is not None and n:
            cpu_rounds.setdefault((row["workload"], row["proxy"]), []).append(c / n * CPU_UNITS[row["workload"]][1])
    # the whole machine's busy CPU seconds per unit of work (clients, backends, proxy and the
    # kernel's own threads; the direct connection's is the floor)
    machine_rounds = {}
    for row in raw:
        c, n = number(row.get("machine_cpu_s")), number(row.get("work"))
        if row["workload"] in CPU_UNITS and c is not None and n:
            machine_rounds.setdefault((row["workload"], row["proxy"]), []).append(c / n * CPU_UNITS[row["workload"]][1])
    med = {}
    for key, values in rounds.items():
        ok = [v for v in values if v is not None]
        med[key] = statistics.median(ok) if ok else None

    lines = []
    lines.append("| Workload | Unit | " + " | ".join(proxy_label(p) for p in proxies)
                 + "".join(f" | rsproxyd / {proxy_label(p)}" for p in PEERS if p in proxies and "rsproxyd" in proxies) + " |")
    lines.append("|" + "---|" * (2 + len(proxies) + sum(1 for p in PEERS if p in proxies and "rsproxyd" in proxies)))
    for key, label, unit, higher in WORKLOADS:
        if not any((key, p) in rounds for p in proxies):
            continue
        cells = []
        for p in proxies:
            if (key, p) not in rounds:
                cells.append("—")
                continue
            v = med[(key, p)]
            cell = fmt(v)
            r = paired(key, p, "direct")
            if higher and p != "direct" and r is not None:
                cell += f" ({r:.2f}x direct)"
            cells.append(cell)
        ratios = []
        if "rsproxyd" in proxies:
            for p in PEERS:
                if p in proxies:
                    ratios.append(fmt_ratio(paired(key, "rsproxyd", p)))
        unit_text = unit if higher else f"{unit}, lower is better"
        lines.append(f"| {label} | {unit_text} | " + " | ".join(cells)
                     + "".join(f" | {r}" for r in ratios) + " |")
    table = "\n".join(lines)

    rss_lines = ["| Proxy | Peak RSS idle (after one request) | Peak RSS with 1,000 open connections |",
                 "|---|---|---|"]
    for row in rss:
        rss_lines.append(f"| {LABELS.get(row['proxy'], row['proxy'])} | {int(row['idle_kib']) / 1024:.1f} MiB "
                         f"| {int(row['loaded_kib']) / 1024:.1f} MiB |")
    rss_table = "\n".join(rss_lines) if rss else "(no RSS measured)"

    cpu_proxies = [p for p in proxies if any((k, p) in cpu_rounds for k in CPU_UNITS)]
    cpu_lines = ["| Workload | Unit | " + " | ".join(proxy_label(p) for p in cpu_proxies) + " |",
                 "|---|---|" + "---|" * len(cpu_proxies)]
    for key, wlabel, _, _ in WORKLOADS:
        if key not in CPU_UNITS or not any((key, p) in cpu_rounds for p in cpu_proxies):
            continue
        cells = [fmt(statistics.median(cpu_rounds[(key, p)])) if (key, p) in cpu_rounds else "—"
                 for p in cpu_proxies]
        cpu_lines.append(f"| {wlabel} | {CPU_UNITS[key][0]} | " + " | ".join(cells) + " |")
    cpu_table = "\n".join(cpu_lines) if cpu_proxies else ""

    machine_proxies = [p for p in proxies if any((k, p) in machine_rounds for k in CPU_UNITS)]
    machine_lines = ["| Workload | Unit | " + " | ".join(proxy_label(p) for p in machine_proxies) + " |",
                     "|---|---|" + "---|" * len(machine_proxies)]
    for key, wlabel, _, _ in WORKLOADS:
        if key not in CPU_UNITS or not any((key, p) in machine_rounds for p in machine_proxies):
            continue
        cells = [fmt(statistics.median(machine_rounds[(key, p)])) if (key, p) in machine_rounds else "—"
                 for p in machine_proxies]
        machine_lines.append(f"| {wlabel} | {CPU_UNITS[key][0]} | " + " | ".join(cells) + " |")
    machine_table = "\n".join(machine_lines) if machine_proxies else ""

    # each rsproxyd variant against rsproxyd itself and HAProxy, paired within rounds
    variants = [p for p in proxies if p.startswith("rsproxyd:")]
    peers = [p for p in ("rsproxyd", "haproxy", "direct") if p in proxies]
    variant_lines = []
    if variants and peers:
        variant_lines = ["| Workload | " + " | ".join(f"{proxy_label(v)} / {proxy_label(p)}" for v in variants for p in peers) + " |",
                         "|---|" + "---|" * (len(variants) * len(peers))]
        for key, wlabel, _, higher in WORKLOADS:
            if not any((key, v) in rounds for v in variants):
                continue
            cells = [fmt_ratio(paired(key, v, p)) for v in variants for p in peers]
            variant_lines.append(f"| {wlabel}{'' if higher else ' (lower is better)'} | " + " | ".join(cells) + " |")
    variant_table = "\n".join(variant_lines)

    detail = ["| Workload | Proxy | Per round |", "|---|---|---|"]
    for key, label, unit, _ in WORKLOADS:
        for p in proxies:
            if (key, p) in rounds:
                detail.append(f"| {key} | {p} | " + " / ".join(fmt(v) for v in rounds[(key, p)]) + f" {unit} |")

    n_rounds = max((len(v) for v in rounds.values()), default=0)
    md = []
    md.append(f"## Benchmarks\n")
    md.append(f"Medians of {n_rounds} interleaved round(s). Ratios are medians over rounds of the ratio "
              "within a round (rsproxyd over the peer: above 1.00x is better for rsproxyd, except for the "
              "cold-start delay, where below is better); in parentheses, the proxy's fraction of the direct "
              "connection.\n")
    md.append(table + "\n")
    md.append(rss_table + "\n")
    if cpu_table:
        md.append("The proxy's own CPU time (user + system, all its threads, from /proc) per unit of work, "
                  "median over rounds; lower is better. Less sensitive to a busy machine than the rates above, "
                  "but kernel work done in softirq context may be charged to whichever process was running.\n")
        md.append(cpu_table + "\n")
    if machine_table:
        md.append("The whole machine's busy CPU time (all cores, every process and the kernel's threads: "
                  "client, backend and proxy together) per unit of work, median over rounds; lower is better. "
                  "It counts work the kernel does for a proxy outside the proxy's process (softirq, kernel "
                  "workers), which the table above misses.\n")
        md.append(machine_table + "\n")
    if variant_table:
        md.append("rsproxyd's variants against rsproxyd and HAProxy (median over rounds of the ratio within a round).\n")
        md.append(variant_table + "\n")
    if machine:
        md.append("Machine: " + ", ".join(f"{k} {machine[k]}" for k in ("cpu", "cores", "memory", "kernel", "os")
                                        if k in machine) + ".  ")
        md.append("Versions: " + "; ".join(machine[k] for k in ("rsproxyd", "ssp", "haproxy", "tools") if k in machine)
                  + ".  ")
        md.append(f"Date: {machine.get('date', '?')}; load average {machine.get('load', '?')}.  ")
        md.append(f"Reproduce: `{machine.get('command', 'benches/compare.sh')}` (as root on Debian 12).\n")
    md.append("![benchmark chart](chart.svg)\n")
    notes_path = os.path.join(out, "notes.txt")
    notes = open(notes_path).read().strip() if os.path.exists(notes_path) else ""
    if notes:
        md.append("Notes from the run:\n\n" + "\n".join(f"- {n}" for n in notes.splitlines()) + "\n")
    md.append("<details><summary>Every round</summary>\n\n" + "\n".join(detail) + "\n\n</details>\n")
    with open(os.path.join(out, "results.md"), "w") as f:
        f.write("\n".join(md))
    with open(os.path.join(out, "chart.svg"), "w") as f:
        f.write(chart(proxies, med, rss, machine, paired))
    print(table)
    print()
    print(rss_table)
    if cpu_table:
        print()
        print(cpu_table)
    if machine_table:
        print()
        print(machine_table)
    if variant_table:
        print()
        print(variant_table)
    if notes:
        print()
        print(notes)


def chart(proxies, med, rss, machine, paired):
    """Three panels: throughput relative to direct, cold-start delay, peak RSS."""
    W, H = 1120, 470
    top, bottom = 70, 380
    svg = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" '
           'font-family="DejaVu Sans, Arial, sans-serif" font-size="12">',
           f'<rect width="{W}" height="{H}" fill="white"/>',
           f'<text x="20" y="26" font-size="17" font-weight="bold">rsproxyd vs systemd-socket-proxyd and HAProxy'
           f'</text>',
           f'<text x="20" y="46" fill="#555">{escape(machine.get("date", ""))} · {escape(machine.get("cpu", ""))} · '
           f'{escape(machine.get("cores", "?"))} cores · medians of interleaved rounds · '
           f'{escape(machine.get("command", "benches/compare.sh"))}</text>']

    def axis(x0, x1, vmax, ticks, fmt_tick):
        for t in ticks:
            y = bottom - (bottom - top) * t / vmax
            svg.append(f'<line x1="{x0}" x2="{x1}" y1="{y:.1f}" y2="{y:.1f}" stroke="#e0e0e0"/>')
            svg.append(f'<text x="{x0 - 6}" y="{y + 4:.1f}" text-anchor="end" fill="#555">{fmt_tick(t)}</text>')
        svg.append(f'<line x1="{x0}" x2="{x1}" y1="{bottom}" y2="{bottom}" stroke="#333"/>')

    def bar(x, w, v, vmax, colour, label):
        h = (bottom - top) * min(v, vmax) / vmax
        svg.append(f'<rect x="{x:.1f}" y="{bottom - h:.1f}" width="{w:.1f}" height="{h:.1f}" fill="{colour}"/>')
        svg.append(f'<text x="{x + w / 2:.1f}" y="{bottom - h - 4:.1f}" text-anchor="middle" font-size="10">'
                   f'{escape(label)}</text>')

    # panel 1: throughput relative to direct
    shown = [p for p in proxies if p != "direct"]
    x0, x1 = 60, 620
    svg.append(f'<text x="{x0}" y="{top - 8}" font-weight="bold">Throughput, relative to direct (higher is better)'
               f'</text>')
    axis(x0, x1, 1.2, [0, 0.25, 0.5, 0.75, 1.0], lambda t: f"{t:.2f}")
    svg.append(f'<line x1="{x0}" x2="{x1}" y1="{bottom - (bottom - top) / 1.2:.1f}" '
               f'y2="{bottom - (bottom - top) / 1.2:.1f}" stroke="#333" stroke-dasharray="4 3"/>')
    groups = [w for w in WORKLOADS if w[3] and med.get((w[0], "direct"))]
    gw = (x1 - x0) / max(len(groups), 1)
    names = {"bulk": "bulk", "rr_1conn": "req/resp ×1", "rr_50conn": "req/resp ×50",
             "http_ka": "HTTP keep-alive", "new_conn": "new conns", "new_conn_ab": "new conns (ab)"}
    for i, (key, _, _, _) in enumerate(groups):
        bw = gw * 0.75 / max(len(shown), 1)
        for j, p in enumerate(shown):
            r = paired(key, p, "direct")
            if r is not None:
                bar(x0 + i * gw + gw * 0.125 + j * bw, bw - 2, r, 1.2, COLOURS[p], f"{r:.2f}")
        svg.append(f'<text x="{x0 + (i + 0.5) * gw:.1f}" y="{bottom + 16}" text-anchor="middle">'
                   f'{names[key]}</text>')

    # panel 2: cold start
    x0, x1 = 700, 860
    svg.append(f'<text x="{x0 - 40}" y="{top - 8}" font-weight="bold">Cold start, ms</text>')
    cold = [(p, med.get(("cold_start", p))) for p in ("rsproxyd", "ssp") if med.get(("cold_start", p)) is not None]
    if cold:
        vmax = max(v for _, v in cold) * 1.2
        step = nice_step(vmax)
        axis(x0, x1, vmax, [k * step for k in range(int(vmax / step) + 1)], lambda t: f"{t:g}")
        bw = (x1 - x0) / len(cold)
        for j, (p, v) in enumerate(cold):
            bar(x0 + j * bw + bw * 0.15, bw * 0.7, v, vmax, COLOURS[p], fmt(v))
            svg.append(f'<text x="{x0 + (j + 0.5) * bw:.1f}" y="{bottom + 16}" text-anchor="middle">'
                       f'{"ssp+guard" if p == "ssp" else p}</text>')

    # panel 3: peak RSS
    x0, x1 = 930, 1100
    svg.append(f'<text x="{x0 - 40}" y="{top - 8}" font-weight="bold">Peak RSS, MiB</text>')
    if rss:
        vals = [(r["proxy"], int(r["idle_kib"]) / 1024, int(r["loaded_kib"]) / 1024) for r in rss]
        vmax = max(v[2] for v in vals) * 1.2
        step = nice_step(vmax)
        axis(x0, x1, vmax, [k * step for k in range(int(vmax / step) + 1)], lambda t: f"{t:g}")
        gw = (x1 - x0) / len(vals)
        for i, (p, idle, loaded) in enumerate(vals):
            bw = gw * 0.8 / 2
            bar(x0 + i * gw + gw * 0.1, bw - 1, idle, vmax, COLOURS.get(p, "#999"), f"{idle:.1f}")
            svg.append(f'<rect x="{x0 + i * gw + gw * 0.1 + bw:.1f}" y="{bottom - (bottom - top) * loaded / vmax:.1f}" '
                       f'width="{bw - 1:.1f}" height="{(bottom - top) * loaded / vmax:.1f}" '
                       f'fill="{COLOURS.get(p, "#999")}" fill-opacity="0.55"/>')
            svg.append(f'<text x="{x0 + i * gw + gw * 0.1 + bw * 1.5:.1f}" '
                       f'y="{bottom - (bottom - top) * loaded / vmax - 4:.1f}" text-anchor="middle" '
                       f'font-size="10">{loaded:.1f}</text>')
            svg.append(f'<text x="{x0 + (i + 0.5) * gw:.1f}" y="{bottom + 16}" text-anchor="middle" '
                       f'font-size="10">{"ssp" if p == "ssp" else p}</text>')
        svg.append(f'<text x="{x0 - 40}" y="{bottom + 34}" fill="#555" font-size="10">solid: idle · '
                   f'light: 1,000 connections</text>')

    # legend
    lx = 60
    for p in proxies:
        if p == "direct":
            svg.append(f'<line x1="{lx}" x2="{lx + 22}" y1="{H - 30}" y2="{H - 30}" stroke="#333" '
                       f'stroke-dasharray="4 3"/>')
        else:
            svg.append(f'<rect x="{lx}" y="{H - 38}" width="22" height="14" fill="{COLOURS[p]}"/>')
        text = proxy_label(p) + (" (= 1.0)" if p == "direct" else "")
        svg.append(f'<text x="{lx + 28}" y="{H - 27}">{escape(text)}</text>')
        lx += 50 + 8 * len(text)
    svg.append("</svg>\n")
    return "\n".join(svg)


def nice_step(vmax):
    raw = vmax / 5
    mag = 10 ** math.floor(math.log10(raw)) if raw > 0 else 1
    for m in (1, 2, 2.5, 5, 10):
        if raw <= m * mag:
            return m * mag
    return 10 * mag


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    main(sys.argv[1])
