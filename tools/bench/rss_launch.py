#!/usr/bin/env python3
"""rss_launch.py RESULT.json CMD...: runs CMD (stdout and stderr pass through), then writes {"rss_mb", "rc"} to
RESULT.json: CMD's own peak resident set.

Why a launcher: os.wait4 in a benchmark script would be wrong. On fork the child's memory map copies the
parent's high-water mark and exec records it in the child's ru_maxrss, so a child of a process holding torch and
a model starts from that process's peak (1.7 GB seen). This is a fresh small process (no torch), so its child's
ru_maxrss is the child's own. machine.run_child uses it.
"""
import json
import os
import subprocess
import sys

if __name__ == "__main__":
    child = subprocess.Popen(sys.argv[2:])
    _, status, usage = os.wait4(child.pid, 0)
    with open(sys.argv[1], "w") as out:
        json.dump({"rss_mb": usage.ru_maxrss / 1024, "rc": os.waitstatus_to_exitcode(status)}, out)
