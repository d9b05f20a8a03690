"""A ~100 KB chat request: the first 6,000 characters of each source file, in path order, as
alternating turns, until about 90 KB (wrk takes the body through an environment string: at
most 128 KiB). Deterministic for a given tree; used by bench.sh --large and instr.sh KIND=large."""
import glob
import json

msgs = [{"role": "system", "content": "You are a careful coding assistant."}]
size = 0
for i, f in enumerate(sorted(glob.glob("src/**/*.rs", recursive=True))):
    t = open(f).read()[:6000]
    msgs.append({"role": "user" if i % 2 == 0 else "assistant", "content": f"File {f}:\n{t}"})
    size += len(t)
    if size > 90_000:
        break
msgs.append({"role": "user", "content": "Refactor the function above."})
print(json.dumps({"model": "coder", "messages": msgs}))
