"""One rollout's numbers from load.py's answers.

    python3 summarize.py ANSWERS_JSON START END NEW_VERSION COMMAND_SECONDS

START is when the update command started, END the end of the window to look at (the
next rollout's start, or 0 for the end of the load); both are Unix times. Prints JSON:
requests and failures in the window, seconds from START to the last answer by old code
(after which every answer came from new code), and the command's own time.
"""

import json
import sys

answers = json.load(open(sys.argv[1]))
start, end, new, command_s = float(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5])
window = [a for a in answers if a[0] >= start and (end == 0 or a[0] < end)]
old = [a for a in window if a[1] == 200 and a[2] != new]
last_old = max((a[0] for a in old), default=start)
print(json.dumps({
    "requests": len(window),
    "failed": sum(1 for a in window if a[1] != 200),
    "old_answers": len(old),
    "new_answers": sum(1 for a in window if a[1] == 200 and a[2] == new),
    "new_code_everywhere_s": round(last_old - start, 3),
    "command_s": round(command_s, 3),
}))
