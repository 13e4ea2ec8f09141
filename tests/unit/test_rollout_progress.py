"""rollout.pairs.progress_bar: rich on a terminal, plain lines on stderr otherwise (issue 15.10)."""


def test_progress_bar_prints_plain_lines_when_not_on_a_terminal(capsys):
    """A long phase (the demo's sampling, its evaluation) tells a log file how far it is; rich printed nothing
    until the end when stderr was not a terminal."""
    from alignlab.rollout.pairs import progress_bar

    with progress_bar("sample pairs", 4) as (bar, task):
        bar.advance(task, 3)
        bar.advance(task)
    err = capsys.readouterr().err
    assert "sample pairs: 3/4 (" in err and "sample pairs: 4/4 (" in err
