"""Printing for the benchmarks that repeat a whole run (a VM boot) ROUNDS times."""
import statistics


def print_round(i, row, digits):
    print(f"round {i + 1}: " + ", ".join(f"{k}={v:.{digits}f}" for k, v in row.items()), flush=True)


def print_summary(title, rows, digits):
    """Each figure's median, and its min..max, over the rounds."""
    print(f"\n{title}; median (min..max)")
    width = max(len(k) for k in rows[0])
    for key in rows[0]:
        values = [r[key] for r in rows]
        print(f"  {key:{width}s} {statistics.median(values):9.{digits}f}  "
              f"({min(values):.{digits}f}..{max(values):.{digits}f})")
