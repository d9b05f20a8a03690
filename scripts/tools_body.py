"""A request as a coding agent sends it on a first turn: 20 function tools (~37 KB of
definitions: a long description each, parameter schemas with short descriptions) and one short
user message. Deterministic; used by instr.sh / ab.sh KIND=tools. What redaction costs on the
tool definitions it reads (they reach the upstream too)."""
import json

verbs = ["Read", "Write", "Edit", "Grep", "Glob", "Bash", "Test", "Lint", "Format", "Search",
         "Fetch", "List", "Move", "Delete", "Diff", "Commit", "Review", "Plan", "Todo", "Notebook"]
tools = []
for n, v in enumerate(verbs):
    desc = (f"{v} tool. " + " ".join(
        f"Step {k}: when the user asks to {v.lower()} something, check the path, respect the "
        f"workspace rules, report what changed and never touch files outside the project."
        for k in range(7)))
    props = {
        f"arg_{k}": {"type": "string" if k % 3 else "integer",
                     "description": f"The {k}th argument of {v.lower()}: a path, a pattern or a count."}
        for k in range(5)
    }
    props["mode"] = {"type": "string", "enum": ["fast", "careful", "dry_run"],
                     "description": "How to run it."}
    tools.append({"type": "function", "function": {
        "name": f"{v.lower()}_{n}", "description": desc,
        "parameters": {"type": "object", "properties": props, "required": ["arg_0"]}}})
print(json.dumps({"model": "coder", "tools": tools,
                  "messages": [{"role": "user", "content": "Fix the failing test in src/lib.rs."}]}))
