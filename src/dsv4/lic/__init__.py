"""LIC: the terminal coding agent of dsv4 (SPEC §6).

A REPL and a headless `lic -p "task"` mode around one agent loop over the OpenAI Chat
Completions API (DeepSeek's API, any compatible server, or the local `dsv4 serve`).
Nothing here imports torch, nor anything that does: `lic` must reach its first request
in under 0.3 s. Heavy UI libraries (rich, prompt_toolkit) are imported only by the REPL.
"""
