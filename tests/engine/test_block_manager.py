import pytest

from pipedecode.engine.block_manager import NULL_BLOCK, BlockManager

from tests.engine.helpers import make_seq


def test_allocation_covers_every_token_and_never_hands_out_the_null_block(pool):
    seqs = [make_seq(i, 4) for i in range(8)]          # one block each: the whole pool
    for s in seqs:
        assert pool.can_allocate(s.num_tokens)
        pool.allocate(s)
    handed = sorted(b for s in seqs for b in s.block_table)
    assert handed == list(range(1, 9)) and NULL_BLOCK not in handed
    assert pool.num_free_blocks == 0 and pool.usage == 1.0
    assert not pool.can_allocate(1)
    with pytest.raises(ValueError, match="needs 1 blocks, 0 are free"):
        pool.allocate(make_seq(9, 1))


def test_append_slot_only_at_a_block_boundary(pool):
    seq = make_seq(0, 5)                               # 5 tokens: 2 blocks of 4
    pool.allocate(seq)
    assert len(seq.block_table) == 2 and not pool.needs_block(seq)
    for token in range(3):                             # tokens 6..8 fit the second block
        seq.append(token)
        pool.append_slot(seq)
        assert len(seq.block_table) == 2
    seq.append(9)                                      # the 9th token crosses into block 3
    assert pool.needs_block(seq) and pool.can_append([seq])
    pool.append_slot(seq)
    assert len(seq.block_table) == 3 and len(set(seq.block_table)) == 3


def test_can_append_counts_the_blocks_all_sequences_need():
    pool = BlockManager(num_blocks=4, block_size=2)    # 3 usable
    a, b = make_seq(0, 2), make_seq(1, 2)
    pool.allocate(a)
    pool.allocate(b)
    a.append(1)
    b.append(1)
    assert pool.can_append([a]) and pool.can_append([b]) and not pool.can_append([a, b])


def test_free_returns_blocks_and_peak_is_kept(pool):
    a, b = make_seq(0, 9), make_seq(1, 12)             # 3 + 3 blocks
    pool.allocate(a)
    pool.allocate(b)
    assert pool.num_used_blocks == 6 and pool.peak_used_blocks == 6
    pool.free(a)
    assert a.block_table == [] and pool.num_used_blocks == 3 and pool.peak_used_blocks == 6
    assert pool.peak_usage == 6 / 8
    pool.reset_peak()
    assert pool.peak_used_blocks == 3
    c = make_seq(2, 20)                                # 5 blocks: reuses a's
    pool.allocate(c)
    assert set(c.block_table).isdisjoint(b.block_table) and pool.num_free_blocks == 0


def test_misuse_is_an_error(pool):
    seq = make_seq(0, 3)
    with pytest.raises(ValueError, match="holds no blocks"):
        pool.append_slot(seq)
    pool.allocate(seq)
    with pytest.raises(ValueError, match="already holds"):
        pool.allocate(seq)
    other = make_seq(1, 3)
    other.block_table = list(seq.block_table)
    with pytest.raises(ValueError, match="not held by sequence 1"):
        pool.free(other)
    with pytest.raises(ValueError, match="num_blocks must be >= 2"):
        BlockManager(1, 4)
    with pytest.raises(ValueError, match="block_size"):
        BlockManager(4, 0)
