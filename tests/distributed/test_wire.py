"""The wire format: a micro-batch's metadata survives encoding, and what int32 cannot carry is
refused with the field's name."""

import numpy as np
import pytest

from pipedecode.distributed import wire
from pipedecode.distributed.wire import BatchMeta


def test_a_prefill_round_trips():
    meta = BatchMeta("prefill", 7, np.array([3, 9]), ids=np.array([5, 6, 7, 8, 9]),
                     starts=np.array([0, 2, 5], dtype=np.int32), slots=np.array([4, 5, 8, 9, 10]))
    header, payload = wire.encode(meta)
    assert header.dtype == payload.dtype == np.int32 and len(header) == wire.HEADER_INTS
    assert len(payload) == 5 + 3 + 5 + 2 == header[6]
    back = wire.decode(header, payload)
    assert back.kind == "prefill" and back.batch_id == 7 and back.activation_rows == 5
    for name in ("seq_ids", "ids", "starts", "slots"):
        assert np.array_equal(getattr(back, name), getattr(meta, name)), name


@pytest.mark.parametrize("key", [("sequential", 4), ("interleaved", 2, 4, 48, 84)])
def test_a_decode_step_round_trips(key):
    rows = key[1] * (key[2] if len(key) > 2 else 1)
    staged = np.arange(rows * 5, dtype=np.int32).reshape(rows, 5)
    meta = BatchMeta("decode", 12, np.array([1, 2, 3]), key=key, staged=staged,
                     rows=np.array([0, 1, 4]))
    back = wire.decode(*wire.encode(meta))
    assert back.key == key and back.activation_rows == rows and back.num_seqs == 3
    assert np.array_equal(back.staged, staged) and np.array_equal(back.rows, [0, 1, 4])


def test_what_int32_cannot_carry_is_refused():
    meta = BatchMeta("prefill", 1, np.array([0]), ids=np.array([1]),
                     starts=np.array([0, 1], dtype=np.int32), slots=np.array([2 ** 31]))
    with pytest.raises(ValueError, match="KV slots"):
        wire.encode(meta)
    header, payload = wire.encode(BatchMeta("prefill", 1, np.array([0]), ids=np.array([1]),
                                            starts=np.array([0, 1], dtype=np.int32),
                                            slots=np.array([3])))
    with pytest.raises(ValueError, match="payload of 3 ints"):
        wire.decode(header, payload[:3])
    assert wire.control_header(wire.OP_END)[0] == wire.OP_END
