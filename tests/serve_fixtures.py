"""A tiny randomly initialised checkpoint (model + trained byte-level BPE) and a live server."""

from __future__ import annotations

import inspect
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import torch

SRC = str(Path(__file__).resolve().parents[1] / "src")


WEATHER_TOOL = {"name": "get_weather", "description": "Weather of a city",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}
WEATHER_QUESTION = "What is the weather in Paris?"
WEATHER_CALL = {"name": "get_weather", "arguments": {"city": "Paris"}}


def tool_conversation(with_answer: bool) -> list[dict]:
    """The messages the server builds for WEATHER_QUESTION with the WEATHER_TOOL."""
    from dsv4.serve.chatstate import tools_system_text

    msgs = [{"role": "system", "content": tools_system_text([WEATHER_TOOL])},
            {"role": "user", "content": WEATHER_QUESTION}]
    if with_answer:
        msgs.append({"role": "assistant", "content": "", "tool_calls": [WEATHER_CALL]})
    return msgs


def teach_tool_call(model, tok, steps: int = 50) -> None:
    """Overfit the model on one assistant turn that calls WEATHER_TOOL, so that greedy
    decoding of that prompt really produces a tool call (the random model never would)."""
    ids, mask = tok.encode_chat(tool_conversation(True), add_generation_prompt=False, return_mask=True)
    x = torch.tensor([ids[:-1]])
    y = torch.tensor([[t if m else -100 for t, m in zip(ids[1:], mask[1:], strict=True)]])
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(steps):
        loss, _ = model.loss(x, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()


def make_tiny_checkpoint(path: Path, max_seq_len: int = 256, seed: int = 0, teach: bool = False) -> Path:
    from dsv4.data.tokenizer import Tokenizer
    from dsv4.model.transformer import build_model
    from dsv4.train.checkpoint import write_model_files

    texts = [inspect.getsource(m) for m in (json, socket, inspect)]
    tok = Tokenizer.train(texts, vocab_size=512)
    torch.manual_seed(seed)
    model = build_model("tiny", vocab_size=tok.vocab_size, max_seq_len=max_seq_len)
    if teach:
        teach_tool_call(model, tok)
    path.mkdir(parents=True, exist_ok=True)
    write_model_files(path, model.config.to_json(), model.state_dict(), {"tokenizer.json": tok.to_str()})
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LiveServer:
    """`dsv4 serve` in a subprocess on 127.0.0.1, killed (its own process only) on close."""

    def __init__(self, ckpt: Path, *extra: str, api_key: str | None = None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        cmd = [sys.executable, "-c", "import sys; from dsv4.cli import main; sys.exit(main())",
               "serve", "--ckpt", str(ckpt), "--port", str(self.port),
               "--model-name", "tiny", *extra]
        if api_key:
            cmd += ["--api-key", api_key]
        env = dict(os.environ, PYTHONPATH=SRC + os.pathsep + os.environ.get("PYTHONPATH", ""),
                   OMP_NUM_THREADS="1")
        self.proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        deadline = time.time() + 60
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("server exited: " + self.proc.stdout.read().decode()[-2000:])
            try:
                if httpx.get(self.url + "/health", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.2)
        self.close()
        raise RuntimeError("server did not come up")

    def health(self) -> dict:
        return httpx.get(self.url + "/health", timeout=5).json()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
