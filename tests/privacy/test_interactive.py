"""Interactive-GNMax (Papernot et al. 2018, Algorithm 2): its decisions, and a worst case that is
the plain composition of its two Gaussian steps."""
import math

import numpy as np
import pytest
from dp_accounting import get_epsilon_gaussian

from pate.privacy import accounting, mechanisms, rdp
from pate.privacy.noise import noise_source


def test_without_a_student_it_decides_like_confident_gnmax():
    votes = np.random.default_rng(0).multinomial(50, [0.6, 0.3, 0.1], size=200)
    labels, asked = mechanisms.interactive_gnmax(votes, np.zeros(votes.shape), 30, 5, 3, 0.9, noise_source(4))
    np.testing.assert_array_equal(labels, mechanisms.confident_gnmax(votes, 30, 5, 3, noise_source(4)))
    assert ((labels >= 0) == asked).all()


def test_the_student_answers_where_the_teachers_agree_and_is_corrected_where_they_do_not():
    votes = np.array([[48, 1, 1], [48, 1, 1], [48, 1, 1], [20, 15, 15]])
    probs = np.array([[0.98, 0.01, 0.01],   # agrees, confident: the student's label, no teacher answer
                      [0.01, 0.98, 0.01],   # confidently wrong: max(v - K p) = 48 - 0.5 >> T, teachers answer
                      [0.5, 0.3, 0.2],      # agrees, not confident: v0 - 25 = 23 >= T: the teachers answer
                      [0.4, 0.3, 0.3]])     # statistic 20 - 20 = 0 < T and not confident: rejected
    labels, asked = mechanisms.interactive_gnmax(votes, probs, 10.0, 1e-3, 1e-3, 0.9, noise_source(0))
    assert asked.tolist() == [False, True, True, False]
    assert labels.tolist() == [0, 0, 0, -1]


def test_bad_student_probabilities_are_refused():
    with pytest.raises(ValueError):
        mechanisms.interactive_gnmax(np.ones((2, 3), int), np.ones((2, 2)), 1, 1, 1, 0.5, noise_source(0))


def test_worst_case_is_the_composition_of_its_two_gaussians():
    mech = mechanisms.InteractiveGNMax(threshold=200, sigma1=150, sigma2=40, student_confidence=0.9)
    orders = rdp.DEFAULT_ORDERS
    per_query = orders / (2 * 150 ** 2) + orders / 40 ** 2  # Mironov 2017, Prop. 7: sensitivities 1 and √2
    np.testing.assert_allclose(mech.worst_case_rdp(640, orders, num_teachers=250, num_classes=10), 640 * per_query)
    settings = accounting.Settings(mech, 250, 10, 640, 1e-5, tuple(orders))
    g = accounting.guarantee(settings)
    # The continuous Gaussians' exact conversion: one Gaussian of noise multiplier
    # 1/sqrt(Q (1/σ1² + 2/σ2²)) (analytic Gaussian mechanism, Balle & Wang 2018). pate's noise is the
    # discrete Gaussian, whose own PLD (connect-the-dots, pessimistic) lands within 1e-5 of it here.
    exact = get_epsilon_gaussian(1 / math.sqrt(640 * (1 / 150 ** 2 + 2 / 40 ** 2)), 1e-5)
    assert g.epsilon == pytest.approx(exact, rel=1e-5) and g.accountant == "pld"
    # and it costs more than Confident-GNMax's mixture bound on the same settings (no free lunch claimed)
    confident = accounting.guarantee(accounting.Settings(mechanisms.ConfidentGNMax(200, 150, 40), 250, 10, 640,
                                                         1e-5, tuple(orders)))
    assert g.epsilon >= confident.epsilon
