"""A ~100 KB chat request: the first 6,000 characters of each source file, in path order, as
alternating turns, until about 90 KB (wrk takes the body through an environment string: at
most 128 KiB). Deterministic for a given tree; used by bench.sh --large and instr.sh KIND=large.

With --turn, a ~4 KB last message (a test log) holds the placeholder @@TURN@@, which the
scripts' wrk Lua replaces with a number unique to each request: the same conversation with a
new turn each time, as a coding agent sends it (KIND=turns).

With --secret, the first user message also holds an AWS key, as when one is pasted once into a
coding session and then stays in its history: what the redaction layers do to such a
conversation (KIND=secret)."""
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
if "--secret" in sys.argv:
    msgs[1]["content"] += "\nexport AWS_ACCESS_KEY_ID=AKIAZ7TESTKEY0000001\n"
if "--turn" in sys.argv:
    log = "".join(f"test layers::case_{n} ... ok ({n % 7} ms)\n" for n in range(110))
    msgs.append({"role": "user", "content": f"Run @@TURN@@ of the tests:\n{log}Why is it slow?"})
else:
    msgs.append({"role": "user", "content": "Refactor the function above."})
print(json.dumps({"model": "coder", "messages": msgs}))
