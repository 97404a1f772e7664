#!/usr/bin/env python3
"""The SM clock and power of each phase of a run: `nvidia-smi --query-gpu=timestamp,clocks.sm,
power.draw --format=csv,noheader -lms 100` samples split at the times in a marks file (lines of
`label... unix-time`), the medians over each phase's loaded samples (power above half the run's
highest, the first five dropped as its warm-up).

    python3 scripts/smi_phases.py smi.csv marks.txt
"""
import datetime
import statistics
import sys


def main():
    if len(sys.argv) != 3:
        sys.exit("usage: smi_phases.py SMI_CSV MARKS")
    samples = []
    for line in open(sys.argv[1]):
        parts = [p.strip() for p in line.split(",")]
        try:
            ts = datetime.datetime.strptime(parts[0], "%Y/%m/%d %H:%M:%S.%f").timestamp()
            samples.append((ts, float(parts[1].split()[0]), float(parts[2].split()[0])))
        except (ValueError, IndexError):
            continue  # a header, an error line or a sample cut short
    if not samples:
        sys.exit(f"smi_phases.py: no samples in {sys.argv[1]}")
    loaded_power = max(s[2] for s in samples) / 2
    marks = []
    for line in open(sys.argv[2]):
        *label, ts = line.split()
        marks.append((" ".join(label), float(ts)))
    for (label, start), (_, end) in zip(marks, marks[1:]):
        loaded = [s for s in samples if start <= s[0] <= end and s[2] > loaded_power]
        body = loaded[5:] if len(loaded) > 10 else loaded
        if not body:
            print(f"{label:32s} no loaded samples")
            continue
        clock = statistics.median(s[1] for s in body)
        power = statistics.median(s[2] for s in body)
        print(f"{label:32s} {len(loaded):3d} samples  SM clock {clock:6.0f} MHz  power {power:5.0f} W")


if __name__ == "__main__":
    try:
        main()
    except OSError as e:
        sys.exit(f"smi_phases.py: {e}")
