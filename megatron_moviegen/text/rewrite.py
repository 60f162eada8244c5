"""Prompt rewriting at inference: the paper rewrites a user's short prompt into the dense caption style its video model
was trained on, with a large language model. Any local transformers causal LM does it here, given an instruction and a
few examples (text/rewrite_prompt.yaml, or a file of the same form):

    rewriter = PromptRewriter("/models/llama-3-8b-instruct")
    rewriter.rewrite("a corgi surfing")   # "A medium shot of a small corgi ..."

A model with a chat template gets the instruction as the system message and the examples as earlier turns; one
without gets a plain "Prompt: ... / Rewritten: ..." transcript to continue. Decoding is greedy (the same prompt always
gives the same caption).
"""

from __future__ import annotations

from pathlib import Path

import torch

from megatron_moviegen.utils.hub import hub_offline, resolve_pretrained_folder
from megatron_moviegen.utils.io import read_yaml_file

DEFAULT_INSTRUCTIONS = Path(__file__).with_name("rewrite_prompt.yaml")


def read_instructions(path: str | Path = DEFAULT_INSTRUCTIONS) -> tuple[str, list[tuple[str, str]]]:
    """(instruction, [(prompt, rewritten), ...]) from a YAML file with `instruction` and `examples`."""
    data = read_yaml_file(path, "prompt-rewriting instructions")
    try:
        examples = [(str(e["prompt"]), str(e["rewritten"])) for e in data.get("examples") or []]
        instruction = str(data["instruction"]).strip()
    except (KeyError, TypeError):
        raise ValueError(f"{path}: expected `instruction: <text>` and `examples: [{{prompt, rewritten}}, ...]`") from None
    if not instruction:
        raise ValueError(f"{path}: `instruction` is empty")
    return instruction, examples


class PromptRewriter:
    """A causal LM (a folder, or a Hub id already in the cache) that rewrites prompts, on `device`."""

    def __init__(self, model: str, instructions: str | Path = DEFAULT_INSTRUCTIONS, max_new_tokens: int = 200,
                 device: str | torch.device = "cpu"):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        folder = resolve_pretrained_folder(model, what="prompt rewriter")
        self.source = str(model)
        self.instruction, self.examples = read_instructions(instructions)
        self.tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=hub_offline())
        self.model = AutoModelForCausalLM.from_pretrained(folder, local_files_only=hub_offline()).to(device).eval()
        self.max_new_tokens = max_new_tokens

    def _input(self, prompt: str) -> str:
        if getattr(self.tokenizer, "chat_template", None):
            messages = [{"role": "system", "content": self.instruction}]
            for user, rewritten in self.examples:
                messages += [{"role": "user", "content": user}, {"role": "assistant", "content": rewritten}]
            messages.append({"role": "user", "content": prompt})
            return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        shots = "".join(f"Prompt: {user}\nRewritten: {rewritten}\n\n" for user, rewritten in self.examples)
        return f"{self.instruction}\n\n{shots}Prompt: {prompt}\nRewritten:"

    @torch.no_grad()
    def rewrite(self, prompt: str) -> str:
        """The dense caption for `prompt`: the model's greedy continuation, up to its first blank line."""
        inputs = self.tokenizer(self._input(prompt), return_tensors="pt").to(self.model.device)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id
        output = self.model.generate(**inputs, max_new_tokens=self.max_new_tokens, do_sample=False, pad_token_id=pad)
        text = self.tokenizer.decode(output[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
        rewritten = text.split("\n\n")[0].split("\nPrompt:")[0].strip()
        if not rewritten:
            raise ValueError(f"--rewrite-prompt: {self.source} gave no text for the prompt {prompt!r}; check the model "
                             "and the instructions, or leave out --rewrite-prompt")
        return rewritten

    def rewrite_all(self, prompts: list[str]) -> list[str]:
        return [self.rewrite(prompt) for prompt in prompts]


def save_tiny_rewriter(folder: str | Path, seed: int = 0) -> Path:
    """A 2-layer random GPT-2 with a byte-level tokenizer (256 symbols, no merges) saved to `folder`: the rewriter's
    code path in tests and demos (its rewrites are gibberish)."""
    import json
    import tempfile

    from tokenizers import pre_tokenizers
    from transformers import GPT2Config, GPT2LMHeadModel, GPT2Tokenizer

    folder = Path(folder)
    vocab = {symbol: i for i, symbol in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    vocab["<|endoftext|>"] = len(vocab)
    with tempfile.TemporaryDirectory() as scratch:
        (Path(scratch) / "vocab.json").write_text(json.dumps(vocab))
        (Path(scratch) / "merges.txt").write_text("#version: 0.2\n")
        tokenizer = GPT2Tokenizer(str(Path(scratch) / "vocab.json"), str(Path(scratch) / "merges.txt"))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = GPT2LMHeadModel(GPT2Config(vocab_size=len(vocab), n_positions=2048, n_embd=32, n_layer=2, n_head=2,
                                           bos_token_id=len(vocab) - 1, eos_token_id=len(vocab) - 1))
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
