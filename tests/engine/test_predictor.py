import pytest

from pipedecode.engine.predictor import (CallablePredictor, LengthPredictor,
                                         OnlineLengthEstimator, OracleLengths, as_predictor)


def test_log2_buckets():
    b = OnlineLengthEstimator.bucket
    assert [b(n) for n in (1, 2, 3, 4, 7, 8, 1000, 1024)] == [0, 1, 1, 2, 2, 3, 9, 10]


def test_estimator_starts_at_the_prior_and_learns_per_bucket():
    est = OnlineLengthEstimator(prior_tokens=100, prior_weight=4, bucket_weight=4)
    assert est.predict([0] * 50) == pytest.approx(100)
    for _ in range(96):
        est.observe(40, 20)                            # bucket 5 (32..63): short answers
    # global mean (96 * 20 + 4 * 100) / 100 = 23.2; bucket (96 * 20 + 4 * 23.2) / 100
    assert est.global_mean() == pytest.approx(23.2)
    assert est.predict([0] * 50) == pytest.approx((96 * 20 + 4 * 23.2) / 100)
    # an unseen bucket leans on the global mean, not on bucket 5 nor the prior
    assert est.predict([0] * 500) == pytest.approx(23.2)
    est.observe(500, 400)                              # one long answer barely moves its bucket
    assert 23.2 < est.predict([0] * 500) < 120


def test_estimator_rejects_bad_input():
    with pytest.raises(ValueError, match="prior_tokens"):
        OnlineLengthEstimator(prior_tokens=0)
    with pytest.raises(ValueError, match="output_len"):
        OnlineLengthEstimator().observe(10, 0)


def test_oracle_knows_each_prompt():
    oracle = OracleLengths([[1, 2], [3]], [7, 9])
    assert oracle.predict([1, 2]) == 7 and oracle.predict((3,)) == 9
    with pytest.raises(ValueError, match="no length for a prompt of 1 tokens"):
        oracle.predict([4])
    with pytest.raises(ValueError, match="repeats an earlier prompt"):
        OracleLengths([[1], [1]], [2, 3])
    with pytest.raises(ValueError, match="2 prompts but 1"):
        OracleLengths([[1], [2]], [2])


def test_any_callable_becomes_a_predictor():
    p = as_predictor(lambda ids: 3 * len(ids))
    assert isinstance(p, LengthPredictor) and p.predict([0, 0]) == 6
    p.observe(2, 5)                                    # does not learn, does not fail
    with pytest.raises(ValueError, match="positive number of tokens"):
        as_predictor(lambda ids: 0).predict([1])

    class PredictOnly:
        def predict(self, ids):
            return 11

    assert isinstance(as_predictor(PredictOnly()), CallablePredictor)
    est = OnlineLengthEstimator()
    assert as_predictor(est) is est
    assert isinstance(as_predictor(None), OnlineLengthEstimator)
    with pytest.raises(TypeError, match="predictor must be"):
        as_predictor(3)
