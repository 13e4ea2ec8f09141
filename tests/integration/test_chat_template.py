"""Issue 15 item 11: `chat_template: FILE` replaces the model's template on training commands (the data is
rendered with it and the trained model's tokenizer carries it); a template that cannot render a chat is
refused naming the file."""

import json

from alignlab.cli import main

TEMPLATE = ("{% for m in messages %}### {{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
            "{% if add_generation_prompt %}### assistant: {% endif %}")


def _chat_rows(path):
    rows = [{"messages": [{"role": "user", "content": f"question {i}"},
                          {"role": "assistant", "content": f"answer {i}"}]} for i in range(12)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_sft_uses_and_saves_the_given_chat_template(tmp_path, capsys):
    from transformers import AutoTokenizer

    (tmp_path / "hashes.jinja").write_text(TEMPLATE)
    data = _chat_rows(tmp_path / "chat.jsonl")
    out = tmp_path / "out"
    code = main(["sft", "model=tiny-random", f"data={data}", f"output_dir={out}", f"chat_template={tmp_path / 'hashes.jinja'}",
                 "max_steps=1", "batch_size=4", "progress=none", "eval_split=0", "cpu_threads=1"])
    assert code == 0, capsys.readouterr().err
    saved = AutoTokenizer.from_pretrained(out)
    assert saved.chat_template == TEMPLATE
    msgs = [{"role": "user", "content": "q"}]
    assert saved.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True) == "### user: q\n### assistant: "


def test_a_template_that_cannot_render_is_refused_before_training(tmp_path, capsys):
    (tmp_path / "broken.jinja").write_text("{% for m in messages %}{{ m['content'] }")
    data = _chat_rows(tmp_path / "chat.jsonl")
    code = main(["sft", "model=tiny-random", f"data={data}", f"output_dir={tmp_path / 'out'}",
                 f"chat_template={tmp_path / 'broken.jinja'}", "max_steps=1", "progress=none"])
    assert code == 2
    err = capsys.readouterr().err
    assert "chat_template:" in err and "broken.jinja" in err
    assert not (tmp_path / "out" / "metrics.jsonl").exists()
