#!/usr/bin/env python3
"""Summarise an Autobahn (kosoku) report dir. Exit 0 iff every case is OK or INFORMATIONAL,
for both behavior and behaviorClose, and at least one case ran."""
import collections
import json
import os
import sys

path = sys.argv[1]
with open(os.path.join(path, "index.json")) as f:
    index = json.load(f)
clean = {"OK", "INFORMATIONAL"}
bad, total = [], 0
behavior, close = collections.Counter(), collections.Counter()
for cases in index.values():
    for case, r in sorted(cases.items(), key=lambda kv: [int(x) for x in kv[0].split(".")]):
        total += 1
        behavior[r["behavior"]] += 1
        close[r["behaviorClose"]] += 1
        if r["behavior"] not in clean or r["behaviorClose"] not in clean:
            bad.append(f"{case}: behavior={r['behavior']} behaviorClose={r['behaviorClose']}")
for line in bad:
    print("  " + line)


def fmt(counter):
    return ", ".join(f"{k} {v}" for k, v in sorted(counter.items()))


print(f"autobahn behavior: {fmt(behavior)} | behaviorClose: {fmt(close)}")
print(f"autobahn: {total} cases, {len(bad)} not clean")
sys.exit(0 if not bad and total > 0 else 1)
