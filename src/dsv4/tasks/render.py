"""Tasks as training and sampling inputs: chat messages (SFT, chat RL) and completion text.

Chat: [system?, user (instructions + the prompt in a code block), assistant (optional
reasoning_content + the whole function in a ```python block)]. Encode with
`Tokenizer.encode_chat(messages, add_generation_prompt=False, return_mask=True)` for SFT;
`chat_prompt_messages` (no assistant turn) + `add_generation_prompt=True` for sampling.
Completion style: the prompt is the text, the reference body is the target (HumanEval's
base-model format).
"""

from __future__ import annotations

from dsv4.tasks.task import Task

SYSTEM_PROMPT = "You are a careful Python programmer. Answer with one ```python code block."
INSTRUCTION = "Complete the following Python function so that it does what its docstring says."
THINK_INSTRUCTION = " Reason step by step first, then give the code."


def user_message(task: Task, think: bool = False) -> str:
    return f"{INSTRUCTION}{THINK_INSTRUCTION if think else ''}\n\n```python\n{task.prompt}```"


def chat_prompt_messages(task: Task, system: str | None = SYSTEM_PROMPT, think: bool = False) -> list[dict]:
    """The conversation up to (not including) the assistant's answer."""
    msgs = [{"role": "system", "content": system}] if system else []
    msgs.append({"role": "user", "content": user_message(task, think)})
    return msgs


def signature_line(task: Task) -> str:
    """The prompt's `def entry_point(...):` line."""
    for line in task.prompt.splitlines():
        if line.startswith(f"def {task.entry_point}("):
            return line
    raise ValueError(f"{task.task_id}: no def line for {task.entry_point} in the prompt")


def reference_answer(task: Task, think: bool = False, full: bool = False) -> dict:
    """The assistant message for SFT: the reference function in a code block.

    By default the signature plus the body (short targets: the docstring is in the prompt
    already and a small model should not spend capacity copying it); `full` repeats it all.
    """
    code = task.program if full else signature_line(task) + "\n" + task.solution
    msg = {"role": "assistant", "content": f"```python\n{code.rstrip()}\n```"}
    if think:
        msg["reasoning_content"] = task.plan or f"Implement {task.entry_point} as the docstring describes."
    return msg


def chat_messages(task: Task, system: str | None = SYSTEM_PROMPT, think: bool = False) -> list[dict]:
    """One SFT example: the prompt conversation plus the reference answer."""
    return [*chat_prompt_messages(task, system, think), reference_answer(task, think)]


def completion_example(task: Task) -> tuple[str, str]:
    """(prompt, target) for completion-style training: the model continues the prompt."""
    return task.prompt, task.solution
