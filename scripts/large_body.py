"""A ~100 KB chat request: the first 6,000 characters of each source file, in path order, as
alternating turns, until about 90 KB (wrk takes the body through an environment string: at
most 128 KiB). Deterministic for a given tree; used by bench.sh --large and instr.sh KIND=large.

With --turn, a ~4 KB last message (a test log) holds the placeholder @@TURN@@, which the
scripts' wrk Lua replaces with a number unique to each request: the same conversation with a
new turn each time, as a coding agent sends it (KIND=turns)."""
import glob
import json
import sys

msgs = [{"role": "system", "content": "You are a careful coding assistant."}]
size = 0
for i, f in enumerate(sorted(glob.glob("src/**/*.rs", recursive=True))):
    t = open(f).read()[:6000]
    msgs.append({"role": "user" if i % 2 == 0 else "assistant", "content": f"File {f}:\n{t}"})
    size += len(t)
    if size > 90_000:
        break
if "--turn" in sys.argv:
    log = "".join(f"test layers::case_{n} ... ok ({n % 7} ms)\n" for n in range(110))
    msgs.append({"role": "user", "content": f"Run @@TURN@@ of the tests:\n{log}Why is it slow?"})
else:
    msgs.append({"role": "user", "content": "Refactor the function above."})
print(json.dumps({"model": "coder", "messages": msgs}))
