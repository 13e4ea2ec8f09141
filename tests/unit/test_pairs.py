"""Pair collation: the three layouts on two hand-made pairs, checked token by token.

Pairs used throughout (token ids are arbitrary):
    pair 0: prompt [1, 2], chosen [3],    rejected [4, 5]
    pair 1: prompt [6],    chosen [7, 8], rejected [9]
Sequences are numbered chosen first, then rejected (TRL's order): 0 = 1,2|3  1 = 6|7,8
2 = 1,2|4,5  3 = 6|9. Completion token counts are therefore [1, 2, 2, 1].
"""

import pytest
import torch

from alignlab.data.pairs import (
    CHOSEN,
    PROMPT,
    REJECTED,
    PairCollator,
    collate_packed,
    collate_plain,
    collate_prefix,
    prefix_attention_mask,
)
from alignlab.data.tokenize import TokenizedPair

PAIRS = [
    {"prompt_ids": [1, 2], "chosen_ids": [3], "rejected_ids": [4, 5]},
    {"prompt_ids": [6], "chosen_ids": [7, 8], "rejected_ids": [9]},
]


def test_plain_layout_matches_trl_rows():
    """Rows [1,2,3,0] [6,7,8,0] [1,2,4,5] [6,9,0,0] (pad 0, width 4).

    Token at column t is predicted by column t-1 of its row: flat index row*4 + t - 1.
    seq 0: 3 at t=2 -> 1; seq 1: 7,8 at t=1,2 -> 4,5; seq 2: 4,5 at t=2,3 -> 9,10; seq 3: 9 at t=1 -> 12.
    """
    b = collate_plain(PAIRS, pad_id=0)
    assert b["input_ids"].tolist() == [[1, 2, 3, 0], [6, 7, 8, 0], [1, 2, 4, 5], [6, 9, 0, 0]]
    assert b["attention_mask"].tolist() == [[1, 1, 1, 0], [1, 1, 1, 0], [1, 1, 1, 1], [1, 1, 0, 0]]
    assert b["pred_index"].tolist() == [1, 4, 5, 9, 10, 12]
    assert b["target_ids"].tolist() == [3, 7, 8, 4, 5, 9]
    assert b["seq_index"].tolist() == [0, 1, 1, 2, 2, 3]
    assert b["token_counts"].tolist() == [1, 2, 2, 1]
    assert b["num_pairs"] == b["num_items"] == 2
    assert b["num_tokens"] == 3 + 3 + 4 + 2


def test_plain_pad_to_multiple_keeps_indices_consistent():
    """Width 4 rounded up to 8: flat indices use stride 8, so seq 1's 7 at t=1 -> 8*1 + 0 = 8."""
    b = collate_plain(PAIRS, pad_id=0, pad_to_multiple_of=8)
    assert b["input_ids"].shape == (4, 8)
    assert b["pred_index"].tolist() == [1, 8, 9, 17, 18, 24]


def test_packed_layout_one_row_positions_restart():
    """All four sequences end to end in one row of 12 tokens, positions restarting at 0 per sequence.

    Offsets 0, 3, 6, 10; seq 0: 3 at offset 0 + 2 -> pred 1; seq 1: 7,8 at 3+1, 3+2 -> 3, 4;
    seq 2: 4,5 at 6+2, 6+3 -> 7, 8; seq 3: 9 at 10+1 -> 10.
    """
    b = collate_packed(PAIRS, pad_id=0, row_tokens=10_000)
    assert b["input_ids"].tolist() == [[1, 2, 3, 6, 7, 8, 1, 2, 4, 5, 6, 9]]
    assert b["position_ids"].tolist() == [[0, 1, 2, 0, 1, 2, 0, 1, 2, 3, 0, 1]]
    assert b["attention_mask"] is None
    assert b["pred_index"].tolist() == [1, 3, 4, 7, 8, 10]
    assert b["seq_index"].tolist() == [0, 1, 1, 2, 2, 3]


def test_packed_rows_first_fit_and_tail_is_its_own_sequence():
    """Sequence lengths 3, 3, 4, 2.

    row_tokens=6: seq 0 + seq 1 fill row 0 (6), seq 2 + seq 3 fill row 1 (6).
    row_tokens=4, first fit: seq 0 -> row 0 (3); seq 1 does not fit row 0 (6 > 4) -> row 1;
    seq 2 (4) -> row 2; seq 3 (2) fits none of 5, 5, 6 -> row 3. Width 4; each padded tail has
    positions restarting at 0 so transformers does not glue it to the row's last sequence.
    """
    b = collate_packed(PAIRS, pad_id=0, row_tokens=6)
    assert b["input_ids"].tolist() == [[1, 2, 3, 6, 7, 8], [1, 2, 4, 5, 6, 9]]
    b = collate_packed(PAIRS, pad_id=0, row_tokens=4)
    assert b["input_ids"].tolist() == [[1, 2, 3, 0], [6, 7, 8, 0], [1, 2, 4, 5], [6, 9, 0, 0]]
    assert b["position_ids"].tolist() == [[0, 1, 2, 0], [0, 1, 2, 0], [0, 1, 2, 3], [0, 1, 0, 1]]
    assert b["pred_index"].tolist() == [1, 4, 5, 9, 10, 12]


def test_prefix_layout_rejected_positions_restart_after_prompt():
    """One row [1,2,3,4,5 | 6,7,8,9]: pair 0 positions 0,1,2 then 2,3 (rejected restarts at len(prompt)=2).

    Pair 1 at offset 5: positions 0,1,2 then 1. Both completions' first tokens are predicted by
    the LAST PROMPT token: seq 0: 3 <- 1; seq 2: 4 <- 1, 5 <- 3 (the 4);
    seq 1: 7 <- 5, 8 <- 6; seq 3: 9 <- 5. Order of the lists: pair 0 chosen, pair 0 rejected, pair 1 ...
    """
    b = collate_prefix(PAIRS, pad_id=0, row_tokens=10_000)
    assert b["input_ids"].tolist() == [[1, 2, 3, 4, 5, 6, 7, 8, 9]]
    assert b["position_ids"].tolist() == [[0, 1, 2, 2, 3, 0, 1, 2, 1]]
    assert b["block_ids"].tolist() == [[0, 0, 0, 0, 0, 1, 1, 1, 1]]
    assert b["branch"].tolist() == [[PROMPT, PROMPT, CHOSEN, REJECTED, REJECTED, PROMPT, CHOSEN, CHOSEN, REJECTED]]
    assert b["pred_index"].tolist() == [1, 1, 3, 5, 6, 5]
    assert b["target_ids"].tolist() == [3, 4, 5, 7, 8, 9]
    assert b["seq_index"].tolist() == [0, 2, 2, 1, 1, 3]
    assert b["token_counts"].tolist() == [1, 2, 2, 1]
    assert b["num_tokens"] == 12  # the logical 2P + C + R, as TRL counts, though 9 tokens run


def test_prefix_mask_hides_chosen_from_rejected_and_other_pairs():
    """Row above. Rejected token 4 (col 3) sees 1, 2 and itself, not 3 (chosen); 5 (col 4) sees 1,2,4,5.

    Pair 1's tokens (cols 5..8) see nothing of pair 0; 9 (col 8) sees 6 and itself only.
    """
    b = collate_prefix(PAIRS, pad_id=0, row_tokens=10_000)
    m = prefix_attention_mask(b["block_ids"], b["branch"])
    assert m.shape == (1, 1, 9, 9) and m.dtype == torch.bool
    rows = m[0, 0].int().tolist()
    assert rows[2] == [1, 1, 1, 0, 0, 0, 0, 0, 0]  # chosen 3 sees the prompt and itself
    assert rows[3] == [1, 1, 0, 1, 0, 0, 0, 0, 0]
    assert rows[4] == [1, 1, 0, 1, 1, 0, 0, 0, 0]
    assert rows[7] == [0, 0, 0, 0, 0, 1, 1, 1, 0]
    assert rows[8] == [0, 0, 0, 0, 0, 1, 0, 0, 1]


def test_prefix_pad_tail_attends_to_itself_only():
    """row_tokens=5 puts each pair in its own row (5 and 4 tokens); row 1's pad column is block -1.

    A pad query must have at least one key (itself) or sdpa's softmax would give NaN.
    """
    b = collate_prefix(PAIRS, pad_id=0, row_tokens=5)
    assert b["input_ids"].tolist() == [[1, 2, 3, 4, 5], [6, 7, 8, 9, 0]]
    assert b["block_ids"][1].tolist() == [1, 1, 1, 1, -1]
    m = prefix_attention_mask(b["block_ids"], b["branch"])
    assert m[1, 0, 4].int().tolist() == [0, 0, 0, 0, 1]
    assert bool(m.any(-1).all())
    assert b["pred_index"].tolist() == [1, 1, 3, 5 + 0, 5 + 1, 5 + 0]


def test_empty_prompt_first_token_not_scored_in_any_path():
    """prompt [], chosen [3, 4], rejected [5]: only 4 (predicted by 3) is scored; counts [1, 0]."""
    pairs = [{"prompt_ids": [], "chosen_ids": [3, 4], "rejected_ids": [5]}]
    for b in (collate_plain(pairs, 0), collate_packed(pairs, 0), collate_prefix(pairs, 0)):
        assert b["target_ids"].tolist() == [4]
        assert b["token_counts"].tolist() == [1, 0]


def test_reference_logps_pass_through_and_dataclass_input():
    """Cached reference values ride along as [B] tensors; TokenizedPair objects work like dicts."""
    pairs = [TokenizedPair([1, 2], [3], [4, 5]), TokenizedPair([6], [7, 8], [9])]
    assert collate_plain(pairs, 0)["input_ids"].tolist() == collate_plain(PAIRS, 0)["input_ids"].tolist()
    with_refs = [dict(p, ref_chosen_logps=-1.5, ref_rejected_logps=-2.0 - i) for i, p in enumerate(PAIRS)]
    b = PairCollator(0, "prefix")(with_refs)
    assert b["ref_chosen_logps"].tolist() == [-1.5, -1.5]
    assert b["ref_rejected_logps"].tolist() == [-2.0, -3.0]
    assert "ref_chosen_logps" not in PairCollator(0, "plain")(PAIRS)


def test_collator_rejects_unknown_path_and_empty_batch():
    with pytest.raises(ValueError, match="forward path"):
        PairCollator(0, "zigzag")
    with pytest.raises(ValueError, match="empty"):
        collate_plain([], 0)


def test_span_attention_puts_a_micro_batch_in_one_row_unless_capped():
    """Prefix units are 5 and 4 tokens, packed sequences 3, 3, 4, 2. Masked sdpa (spans=False) caps rows at the
    longest unit: 2 prefix rows of width 5 (one padded), 4 packed rows of width 4; under span attention one row of
    9 and 12, with no padding; an explicit row_tokens cap still applies."""
    widths = {}
    for path in ("prefix", "packed"):
        for spans in (False, True):
            widths[path, spans] = tuple(PairCollator(0, path, spans=spans)(PAIRS)["input_ids"].shape)
    assert widths == {("prefix", False): (2, 5), ("prefix", True): (1, 9),
                      ("packed", False): (4, 4), ("packed", True): (1, 12)}
    assert PairCollator(0, "prefix", row_tokens=5, spans=True)(PAIRS)["input_ids"].shape == (2, 5)
    assert PairCollator(0, "plain", spans=True)(PAIRS)["input_ids"].shape == (4, 4)  # plain is TRL's layout
