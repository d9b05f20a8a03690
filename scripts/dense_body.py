"""An ~18 KB chat request dense with credentials (~300: `NAME=value` assignments, GitHub
tokens, AWS key pairs, two PEM blocks), some values repeated further on, as a pasted `.env`
file and a log would be. Deterministic (fixed seed); used with KIND=file BODY_FILE=... by
scripts/instr.sh and scripts/ab.sh to measure redaction on text full of secrets."""
import json
import random

r = random.Random(8)
ALNUM = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"


def word(n, alphabet=ALNUM):
    return "".join(r.choice(alphabet) for _ in range(n))


def pem():
    body = "\n".join(word(64, ALNUM + "+/") for _ in range(6))
    return f"-----BEGIN RSA PRIVATE KEY-----\n{body}\n-----END RSA PRIVATE KEY-----"


lines, seen = [], []
names = ["API_KEY", "DB_PASSWORD", "SECRET_TOKEN", "AUTH_SECRET", "STRIPE_KEY", "SESSION_SECRET"]
for i in range(290):
    k = i % 5
    if k == 0:
        v = word(24)
        lines.append(f"{r.choice(names)}_{i}={v}")
    elif k == 1:
        v = "ghp_" + word(36)
        lines.append(f"GITHUB_TOKEN_{i}={v}")
    elif k == 2:
        v = "AKIA" + word(16, "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567")
        lines.append(f"aws_access_key_id = {v}")
        lines.append(f"aws_secret_access_key = {word(40, ALNUM + '/+')}")
    elif k == 3:
        v = word(20)
        lines.append(f'password: "{v}"')
    else:
        v = None
        lines.append(f"INFO request {i} served in {r.randint(1, 900)} ms")
    if v:
        seen.append(v)
    if i % 20 == 19 and seen:
        lines.append(f"retrying with {r.choice(seen)} after timeout")
lines.insert(60, pem())
lines.insert(180, pem())
text = "Why does this deployment fail?\n" + "\n".join(lines)
print(json.dumps({"model": "coder", "messages": [{"role": "user", "content": text}]}))
