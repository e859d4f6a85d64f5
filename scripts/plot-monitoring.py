#!/usr/bin/env python3
"""Draws the dashboard's fill-and-grow panels from a run of the real-Prometheus test:
    SWELL_MONITORING_DATA=/tmp/mon.json python3 -m pytest sidecars/tests/test_prometheus.py
    python3 scripts/plot-monitoring.py /tmp/mon.json docs/images/fill-and-grow.png
Needs matplotlib (pip install matplotlib)."""
import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

MiB = 1 << 20


def main(data_path, png_path):
    with open(data_path) as f:
        d = json.load(f)
    t0 = d["start"]
    cap = [(t - t0, v / MiB) for t, v in d["capacity"]]
    used = [(t - t0, v / MiB) for t, v in d["used"]]
    grows = [b[0] for a, b in zip(cap, cap[1:]) if b[1] > a[1]]
    fired = [t - t0 for t, _ in d["alert"]]
    ratio = [(t, u / c) for (t, u), (_, c) in zip(used, cap) if c]

    fig, (top, bottom) = plt.subplots(2, 1, figsize=(9, 6.5), sharex=True)
    top.set_title(f"Volume size and use ({d['volume']})")
    top.plot(*zip(*cap), label="size (swell_volume_capacity_bytes)", color="tab:blue", drawstyle="steps-post")
    top.plot(*zip(*used), label="used (swell_volume_used_bytes)", color="tab:orange")
    top.set_ylabel("MiB")
    bottom.set_title("Volume use, and the fill alert")
    bottom.plot(*zip(*ratio), color="tab:orange", label="used / size")
    bottom.axhline(0.8, color="grey", linestyle=":", label="80%: SwellVolumeFillingFast may fire")
    bottom.set_ylim(0, 1.05)
    bottom.set_ylabel("fraction used")
    bottom.set_xlabel("seconds since the test started (1 s scrapes)")
    for ax in (top, bottom):
        for i, g in enumerate(grows):
            ax.axvline(g, color="tab:green", linestyle="--", label="grow (annotation)" if i == 0 else None)
        if fired:
            ax.axvspan(min(fired), max(fired) + 1, color="tab:red", alpha=0.2, label="SwellVolumeFillingFast firing")
        ax.legend(loc="upper left", fontsize=8)
        ax.grid(alpha=0.3)
    fig.text(0.01, 0.005, "A writer fills an xfs volume at about 20 MiB/s, then 8 MiB/s at the maximum. Use rises in steps: "
             "xfs reserves space ahead of a growing file (speculative preallocation).", fontsize=7, color="dimgrey")
    fig.tight_layout(rect=(0, 0.02, 1, 1))
    fig.savefig(png_path, dpi=100)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
