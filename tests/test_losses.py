"""The per-gate loss at hand-computed values; variants; masks; gradients; jit."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl.testing import absltest

from avjax import losses
from tests.helpers import brute_force


def loss_config(margin=1.0, mse_weight=1.0, triplet_weight=1.0, exclude_used=True,
                distance="squared", negatives="hardest"):
  return ml_collections.ConfigDict(dict(margin=margin, mse_weight=mse_weight,
                                        triplet_weight=triplet_weight, exclude_used=exclude_used,
                                        distance=distance, negatives=negatives))


# Hand-computed example: N = 4 clips, labels (0, 0, 1, 1), T = 2 windows, D = G = 2,
# margin 1. Each anchor has 1 positive and 2 negatives, so at the second window
# MWTSM must avoid the negative it used at the first.
LABELS = np.array([0, 0, 1, 1])
# audio gate, t=0: (0,0) (1,0) (0,2) (3,0)
#   d01=1 d02=4 d03=9 d12=5 d13=4 d23=13
#   anchor 0: p=1 (1), n=2 (4 < 9)   -> max(1-4+1, 0)  = 0    picks (0,1,2)
#   anchor 1: p=0 (1), n=3 (4 < 5)   -> max(1-4+1, 0)  = 0    picks (1,0,3)
#   anchor 2: p=3 (13), n=0 (4 < 5)  -> 13-4+1         = 10   picks (2,3,0)
#   anchor 3: p=2 (13), n=1 (4 < 9)  -> 13-4+1         = 10   picks (3,2,1)
# audio gate, t=1: (0,0) (2,0) (1,0) (1,1)
#   d01=4 d02=1 d03=2 d12=1 d13=2 d23=1
#   anchor 0: hardest n=2 (1) was used -> n=3 (2): 4-2+1 = 3   (batch-hard: n=2, 4)
#   anchor 1: n=2 (1), not used        -> 4-1+1 = 4
#   anchor 2: negatives 0 and 1 tie at 1, n=0 used -> n=1: 1-1+1 = 1  (batch-hard: n=0, 1)
#   anchor 3: negatives 0 and 1 tie at 2 -> n=0 (lowest, not used): 1-2+1 = 0
#   MWTSM audio: 20 + 8 = 28; batch-hard: 20 + 9 = 29.
# video gate, t=0: (0,0) (0,2) (0,3) (0,5)
#   d01=4 d02=9 d03=25 d12=1 d13=9 d23=4
#   anchor 0: p=1 (4), n=2 (9)  -> 0         anchor 1: p=0 (4), n=2 (1) -> 4
#   anchor 2: p=3 (4), n=1 (1)  -> 4         anchor 3: p=2 (4), n=1 (9) -> 0
# video gate, t=1: (0,0) (1,0) (1,0) (0,0)
#   d01=1 d02=1 d03=0 d12=0 d13=1 d23=1
#   anchor 0: n=3 (0), not used             -> 1-0+1 = 2
#   anchor 1: hardest n=2 (0) used -> n=3 (1): 1-1+1 = 1   (batch-hard: 2)
#   anchor 2: hardest n=1 (0) used -> n=0 (1): 1-1+1 = 1   (batch-hard: 2)
#   anchor 3: n=0 (0), not used             -> 2
#   MWTSM video: 8 + 6 = 14; batch-hard: 8 + 8 = 16.
# triplet_audio = 28 / (T N) = 3.5, triplet_video = 14 / 8 = 1.75,
# triplet = (28 + 14) / (2 N T) = 2.625; active hinges 5 (audio) + 6 (video) of 16.
# Encoders: audio all zeros; video t=0: (1,0) (0,0) (0,2) (0,0) -> MSE_0 = (1+4)/4 = 1.25,
#   t=1: (1,1) (0,0) (0,0) (0,0) -> MSE_1 = 2/4 = 0.5; MSE = (1.25 + 0.5)/2 = 0.875.
# Loss = 0.875 + 2.625 = 3.5.
AUDIO_GATE = [[[0, 0], [0, 0]], [[1, 0], [2, 0]], [[0, 2], [1, 0]], [[3, 0], [1, 1]]]
VIDEO_GATE = [[[0, 0], [0, 0]], [[0, 2], [1, 0]], [[0, 3], [1, 0]], [[0, 5], [0, 0]]]
VIDEO_ENC = [[[1, 0], [1, 1]], [[0, 0], [0, 0]], [[0, 2], [0, 0]], [[0, 0], [0, 0]]]


def hand_outputs():
  out = {"audio_gate": AUDIO_GATE, "video_gate": VIDEO_GATE, "video_enc": VIDEO_ENC,
         "audio_enc": np.zeros((4, 2, 2))}
  return {k: jnp.asarray(v, jnp.float32) for k, v in out.items()}   # [N=4, T=2, 2]


def random_outputs(seed, n=6, t=3, d=4):
  rng = np.random.default_rng(seed)
  return {k: jnp.asarray(rng.normal(size=(n, t, d)).astype(np.float32))
          for k in ("audio_gate", "video_gate", "audio_enc", "video_enc")}


class LossTest(absltest.TestCase):

  def assertMetrics(self, metrics, **want):
    for k, v in want.items():
      self.assertAlmostEqual(float(metrics[k]), v, places=5, msg=k)

  def test_hand_computed_gating(self):
    loss, m = losses.compute_loss(hand_outputs(), LABELS, loss_config(), "gating", "av")
    self.assertAlmostEqual(float(loss), 3.5, places=5)
    self.assertMetrics(m, loss=3.5, mse=0.875, triplet=2.625, triplet_audio=3.5,
                       triplet_video=1.75, active_triplets=11 / 16, no_triplet_anchors=0.0)

  def test_hand_computed_collapse_watch(self):
    _, m = losses.compute_loss(hand_outputs(), LABELS, loss_config(), "gating", "av")
    # Mean pairwise distance over both windows: audio (1+4+9+5+4+13 + 4+1+2+1+2+1) / 12,
    # video (4+9+25+1+9+4 + 1+1+0+0+1+1) / 12; zero hinges among the 8 mined: audio 3
    # (t0: 0 0 10 10, t1: 3 4 1 0), video 2 (t0: 0 4 4 0, t1: 2 1 1 2).
    self.assertMetrics(m, distance_audio=47 / 12, distance_video=56 / 12,
                       zero_hinge_audio=3 / 8, zero_hinge_video=2 / 8)
    # Collapsed embeddings: distance 0, every hinge the margin, none zero.
    out = {k: jnp.zeros((4, 2, 2)) for k in hand_outputs()}
    loss, m = losses.compute_loss(out, LABELS, loss_config(), "gating", "av")
    self.assertMetrics(m, loss=1.0, distance_audio=0.0, zero_hinge_audio=0.0,
                       active_triplets=1.0)

  def test_hand_computed_euclidean_and_batch_all(self):
    first = {"audio_gate": hand_outputs()["audio_gate"][:, :1]}
    # Non-squared distances (same picks at one window): anchors 2 and 3: sqrt(13) - 2 + 1.
    _, m = losses.compute_loss(first, LABELS, loss_config(distance="euclidean"), "global", "audio")
    self.assertMetrics(m, triplet_audio=2 * (np.sqrt(13) - 1) / 4,
                       distance_audio=float(np.mean(np.sqrt([1, 4, 9, 5, 4, 13]))))
    # Batch-all: every valid (i, p, n), 8 of them; the positive hinges are anchor 2's
    # 13-4+1, 13-5+1 and anchor 3's 13-9+1, 13-4+1: mean 34 / 8 over all valid triplets.
    # False keeps the mined term (20 / 4).
    for flag, want in ((True, 34 / 8), (False, 20 / 4)):
      _, m = losses.compute_loss(first, LABELS, loss_config(), "global", "audio",
                                 batch_all=jnp.asarray(flag))
      self.assertMetrics(m, triplet_audio=want)
    total, positive, valid = losses.batch_all_hinges(
        jnp.swapaxes(first["audio_gate"], 0, 1), LABELS, jnp.ones((1, 4)), 1.0)
    self.assertEqual((float(total), int(positive), int(valid)), (34.0, 4, 8))

  def test_hand_computed_semihard(self):
    # The hand example with semi-hard candidates only (d(i,p) < d(i,n)).
    # Audio t=0: anchors 0 and 1 keep their picks (1 < 4), hinge 0 each. Anchor 2
    #   (d23 = 13 > d20 = 4, d21 = 5) and anchor 3 (d32 = 13 > 9, 4) have no semi-hard
    #   triplet: invalid. t=1: anchor 0: d01 = 4 > d02, d03: invalid; anchor 1: d10 = 4
    #   > d12 = 1, d13 = 2: invalid; anchor 2: d23 = 1, negatives at 1 and 1: none
    #   strictly farther, invalid; anchor 3: d32 = 1 < d30 = 2 (t=0 used (3,2,1), not
    #   (3,2,0)): 1-2+1 = 0. Audio: every valid hinge is 0.
    # Video t=0: anchor 0: p=1 (4), n=2 (9): 0; anchor 1: d10 = 4, d13 = 9 (d12 = 1
    #   not farther): 4-9+1 = 0; anchor 2: d23 = 4, d20 = 9: 0; anchor 3: d32 = 4, d31
    #   = 9: 0. t=1: anchor 0: d01 = 1, negatives d02 = 1, d03 = 0: invalid; anchor 1:
    #   d10 = 1, d12 = 0, d13 = 1: invalid; anchor 2: d23 = 1 (d20 = 1, d21 = 0):
    #   invalid; anchor 3: d32 = 1, d30 = 0, d31 = 1: invalid.
    _, m = losses.compute_loss(hand_outputs(), LABELS, loss_config(negatives="semihard"),
                               "gating", "av")
    self.assertMetrics(m, triplet=0.0, active_triplets=0.0, no_triplet_anchors=(5 + 4) / 16,
                       mse=0.875)
    # With a margin of 4 the valid picks count: audio t=0 anchors 0, 1: 1-4+4 = 1 each,
    # t=1 anchor 3: 1-2+4 = 3; video t=0: 4-9+4 = 0 (x4). Audio 5 / 8, video 0.
    _, m = losses.compute_loss(hand_outputs(), LABELS,
                               loss_config(margin=4.0, negatives="semihard"), "gating", "av")
    self.assertMetrics(m, triplet_audio=5 / 8, triplet_video=0.0, triplet=5 / 16)

  def test_hand_computed_weights_and_margin(self):
    loss, _ = losses.compute_loss(hand_outputs(), LABELS,
                                  loss_config(mse_weight=0.5, triplet_weight=2.0), "gating", "av")
    self.assertAlmostEqual(float(loss), 0.5 * 0.875 + 2.0 * 2.625, places=5)
    # Margin 2 (same picks): audio t0 0+0+11+11, t1 4+5+2+1; video t0 0+5+5+0, t1 3+2+2+3.
    _, m = losses.compute_loss(hand_outputs(), LABELS, loss_config(margin=2.0), "gating", "av")
    self.assertMetrics(m, triplet=(34 + 20) / 16, triplet_audio=34 / 8, triplet_video=20 / 8)

  def test_hand_computed_batch_hard(self):
    _, m = losses.compute_loss(hand_outputs(), LABELS, loss_config(exclude_used=False),
                               "gating", "av")
    self.assertMetrics(m, triplet=(29 + 16) / 16, triplet_audio=29 / 8, triplet_video=16 / 8,
                       mse=0.875)

  def test_hand_computed_variants(self):
    out = hand_outputs()
    # 'lstm': last gate only (batch-hard there): audio 4+4+1+0 = 9, video 2+2+2+2 = 8; no MSE.
    loss, m = losses.compute_loss(out, LABELS, loss_config(), "lstm", "av")
    self.assertMetrics(m, loss=17 / 8, triplet=17 / 8, triplet_audio=9 / 4, triplet_video=2.0,
                       mse=0.0)
    self.assertAlmostEqual(float(loss), 17 / 8, places=5)
    # Single modality: divided by N, not 2N.
    loss, m = losses.compute_loss(out, LABELS, loss_config(), "lstm", "audio")
    self.assertMetrics(m, loss=9 / 4, triplet=9 / 4, triplet_audio=9 / 4)
    self.assertNotIn("triplet_video", m)
    loss, _ = losses.compute_loss({"video_gate": out["video_gate"]}, LABELS, loss_config(),
                                  "lstm", "video")
    self.assertAlmostEqual(float(loss), 2.0, places=5)
    # 'global': one window (t=0 here), triplets on the gate (= encoder) embedding, no MSE:
    # audio 20 / 4, video 8 / 4.
    first = {k: v[:, :1] for k, v in out.items()}
    loss, m = losses.compute_loss(first, LABELS, loss_config(), "global", "av")
    self.assertMetrics(m, loss=3.5, triplet_audio=5.0, triplet_video=2.0, mse=0.0)
    loss, _ = losses.compute_loss(first, LABELS, loss_config(), "global", "video")
    self.assertAlmostEqual(float(loss), 2.0, places=5)

  def test_exclude_used_matters_only_where_windows_are_mined_together(self):
    # The gating model mines across its 2 windows: MWTSM's audio term 28 against
    # batch-hard's 29 (above). 'lstm' mines its last gate alone and 'global' its one
    # window, so `exclude_used` cannot change them, and the run says so.
    out = hand_outputs()
    first = {k: v[:, :1] for k, v in out.items()}
    for variant, outputs, windows in (("gating", out, 2), ("lstm", out, 2), ("global", first, 1)):
      for negatives in ("hardest", "semihard"):
        with self.subTest(variant=variant, negatives=negatives):
          _, used = losses.compute_loss(outputs, LABELS, loss_config(negatives=negatives),
                                        variant, "av")
          _, free = losses.compute_loss(
              outputs, LABELS, loss_config(negatives=negatives, exclude_used=False),
              variant, "av")
          used, free = float(used["triplet_audio"]), float(free["triplet_audio"])
          notice = losses.mwtsm_notice(variant, windows, exclude_used=False)
          if variant == "gating":
            self.assertIsNone(notice)
            if negatives == "hardest":
              self.assertAlmostEqual(used, 28 / 8, places=5)
              self.assertAlmostEqual(free, 29 / 8, places=5)
          else:
            self.assertEqual(used, free)
            self.assertIn(f"'{variant}' variant" if variant == "lstm" else "one window", notice)
          self.assertIsNone(losses.mwtsm_notice(variant, windows, exclude_used=True))

  def test_mse_is_mean_over_gates_and_clips(self):
    out = random_outputs(0)
    _, m = losses.compute_loss(out, LABELS.tolist() + [2, 2], loss_config(), "gating", "av")
    diff = np.asarray(out["video_enc"]) - np.asarray(out["audio_enc"])
    self.assertAlmostEqual(float(m["mse"]), float((diff ** 2).sum(-1).mean()), places=5)

  def test_no_valid_triplet_anchors_are_counted(self):
    out = {"audio_gate": jnp.ones((4, 2, 3))}
    loss, m = losses.compute_loss(out, jnp.zeros(4, jnp.int32), loss_config(), "global", "audio")
    self.assertMetrics(m, loss=0.0, no_triplet_anchors=1.0, active_triplets=0.0)
    # Class 2 has one clip: its anchor (1 of 5) has no positive at either gate and
    # modality; every hinge is the margin (all embeddings equal).
    out = {k: jnp.zeros((5, 2, 3)) for k in ("audio_gate", "video_gate", "audio_enc", "video_enc")}
    _, m = losses.compute_loss(out, jnp.array([0, 0, 1, 1, 2]), loss_config(), "gating", "av")
    self.assertMetrics(m, no_triplet_anchors=1 / 5, triplet=4 / 5, active_triplets=1.0)

  def test_mask_equals_loss_on_real_clips(self):
    out = random_outputs(3, n=8)
    labels = jnp.array([0, 1, 2, 0, 1, 2, 0, 1])
    mask = jnp.array([1, 1, 1, 0, 1, 1, 1, 0], bool)
    keep = np.flatnonzero(np.asarray(mask))
    for variant in ("gating", "lstm"):
      loss_m, m_m = losses.compute_loss(out, labels, loss_config(), variant, "av", mask=mask)
      sub = {k: v[keep] for k, v in out.items()}
      loss_s, m_s = losses.compute_loss(sub, labels[keep], loss_config(), variant, "av")
      for k in m_s:
        self.assertAlmostEqual(float(m_m[k]), float(m_s[k]), places=5, msg=f"{variant} {k}")
      self.assertAlmostEqual(float(loss_m), float(loss_s), places=5)

  def test_padded_windows_against_a_numpy_reference(self):
    # Clips 1 and 4 end after their first / second window; clip 6 is 0.3 inside
    # its last window (partly valid: it counts).
    out = random_outputs(7, n=8, t=3)
    labels = np.array([0, 1, 2, 0, 1, 2, 0, 1])
    valid = np.ones((8, 3), np.float32)
    valid[1, 1:] = 0.0
    valid[4, 2] = 0.0
    valid[6, 2] = 0.3
    real = valid > 0
    for exclude, negatives in ((True, "hardest"), (False, "hardest"), (True, "semihard")):
      _, m = losses.compute_loss(out, labels, loss_config(exclude_used=exclude,
                                                          negatives=negatives),
                                 "gating", "av", window_valid=valid)
      sq = ((np.asarray(out["video_enc"], np.float64) - np.asarray(out["audio_enc"])) ** 2).sum(-1)
      want = {"mse": sq[real].mean()}
      terms = []
      for mod in ("audio", "video"):
        emb = np.swapaxes(np.asarray(out[f"{mod}_gate"], np.float64), 0, 1)     # [T, N, G]
        p, q, v = brute_force(emb, labels, exclude, real.T, negatives=negatives)
        d_ap = ((emb - emb[np.arange(3)[:, None], p]) ** 2).sum(-1)
        d_an = ((emb - emb[np.arange(3)[:, None], q]) ** 2).sum(-1)
        hinge = np.where(v, np.maximum(d_ap - d_an + 1.0, 0.0), 0.0)
        want[f"triplet_{mod}"] = hinge.sum() / real.sum()
        terms.append(want[f"triplet_{mod}"])
      want["triplet"] = np.mean(terms)
      want["loss"] = want["mse"] + want["triplet"]
      self.assertMetrics(m, **{k: float(x) for k, x in want.items()})

  def test_batch_all_warm_up_against_loops(self):
    # Every valid (i, p, n) at every window, with padded windows, a masked clip and a
    # class whose one real clip has no positive at the last window; both distances.
    out = random_outputs(11, n=8, t=3)
    labels = np.array([0, 1, 2, 0, 1, 2, 0, 3])
    valid = np.ones((8, 3), np.float32)
    valid[1, 1:] = 0.0          # clip 1 ends after its first window
    valid[4, 2] = 0.0
    mask = np.array([True] * 6 + [False, True])   # clip 6 is padding; clip 7 alone in class 3
    real = (valid > 0) & mask[:, None]
    for distance in ("squared", "euclidean"):
      _, m = losses.compute_loss(out, labels, loss_config(distance=distance,
                                                          negatives="semihard"),
                                 "gating", "av", mask=mask, window_valid=valid,
                                 batch_all=jnp.asarray(True))
      count = positive = 0
      empty = slots = 0
      for mod in ("audio", "video"):
        emb = np.asarray(out[f"{mod}_gate"], np.float64)              # [N, T, G]
        hinges = []
        for t in range(3):
          for i in range(8):
            if not real[i, t]:
              continue
            slots += 1
            mine = []
            for pos in range(8):
              for neg in range(8):
                if (pos != i and real[pos, t] and real[neg, t] and labels[pos] == labels[i]
                    and labels[neg] != labels[i]):
                  d = [((emb[i, t] - emb[j, t]) ** 2).sum() for j in (pos, neg)]
                  if distance == "euclidean":
                    d = np.sqrt(d)
                  mine.append(max(d[0] - d[1] + 1.0, 0.0))
            empty += not mine
            hinges += mine
        self.assertAlmostEqual(float(m[f"triplet_{mod}"]), np.mean(hinges), places=4)
        self.assertAlmostEqual(float(m[f"zero_hinge_{mod}"]),
                               np.mean(np.asarray(hinges) == 0), places=5)
        count += len(hinges)
        positive += int(np.sum(np.asarray(hinges) > 0))
      self.assertGreater(empty, 0)
      self.assertMetrics(m, active_triplets=positive / count, no_triplet_anchors=empty / slots)

  def test_collapse_signature_per_negatives(self):
    # Collapsed embeddings: the loss at the margin with every triplet active under
    # 'hardest' and during the warm-up; semi-hard mining finds no triplet at all.
    out = {k: jnp.zeros((6, 3, 4)) for k in random_outputs(0)}
    labels = np.array([0, 0, 1, 1, 2, 2])
    for negatives, warm, want in (("hardest", False, (1.0, 1.0, 0.0)),
                                  ("semihard", True, (1.0, 1.0, 0.0)),
                                  ("semihard", False, (0.0, 0.0, 1.0))):
      _, m = losses.compute_loss(out, labels, loss_config(negatives=negatives, mse_weight=0.0),
                                 "gating", "av", batch_all=jnp.asarray(warm))
      self.assertMetrics(m, triplet=want[0], active_triplets=want[1],
                         no_triplet_anchors=want[2], distance_audio=0.0)

  def test_padded_windows_change_neither_loss_nor_gradients(self):
    out = random_outputs(8, n=6, t=3)
    labels = jnp.array([0, 0, 1, 1, 2, 2])
    valid = np.ones((6, 3), np.float32)
    valid[0, 2] = valid[3, 1:] = 0.0
    pad = ~(valid > 0)
    fn = jax.jit(jax.value_and_grad(
        lambda o: losses.compute_loss(o, labels, loss_config(), "gating", "av",
                                      window_valid=valid)[0]))
    loss, grads = fn(out)
    rng = np.random.default_rng(0)
    other = {k: jnp.where(pad[..., None], 100 * rng.normal(size=v.shape), v).astype(jnp.float32)
             for k, v in out.items()}
    loss2, grads2 = fn(other)
    self.assertEqual(float(loss), float(loss2))
    for k in grads:
      np.testing.assert_array_equal(grads[k], grads2[k], err_msg=k)
      self.assertFalse(np.any(np.asarray(grads[k])[pad]), k)   # no gradient into padding
    # The same change on a real window does change the loss (the test can fail).
    real_change = dict(out, video_enc=out["video_enc"].at[1, 2].add(3.0))
    self.assertNotEqual(float(fn(real_change)[0]), float(loss))

  def test_without_padding_the_masked_loss_is_the_unmasked_one(self):
    out = random_outputs(9, n=6, t=3)
    labels = jnp.array([0, 0, 1, 1, 2, 2])
    valid = np.ones((6, 3), np.float32)
    valid[2, 2] = 0.4                       # partly valid counts as a whole window
    for variant, modalities in (("gating", "av"), ("lstm", "av"), ("lstm", "audio")):
      o = out if variant == "gating" else {k: v for k, v in out.items() if k.endswith("gate")}
      _, plain = losses.compute_loss(o, labels, loss_config(), variant, modalities)
      _, masked = losses.compute_loss(o, labels, loss_config(), variant, modalities,
                                      window_valid=valid)
      for k in plain:
        np.testing.assert_array_equal(masked[k], plain[k], err_msg=f"{variant} {k}")

  def test_gradients(self):
    out = random_outputs(1)
    labels = jnp.array([0, 0, 1, 1, 2, 2])
    cfg = loss_config(margin=10.0)   # every hinge active
    fn = lambda o: losses.compute_loss(o, labels, cfg, "gating", "av")[0]
    grads = jax.jit(jax.grad(fn))(out)
    for k, g in grads.items():
      self.assertGreater(float(jnp.abs(g).sum()), 0.0, k)
    # MSE part, analytically: d/d audio_enc of (1/(N T)) sum ||v - a||^2 = -2 (v - a) / (N T).
    want = -2.0 * (out["video_enc"] - out["audio_enc"]) / (6 * 3)
    np.testing.assert_allclose(grads["audio_enc"], want, rtol=1e-5, atol=1e-6)
    # Triplet part: a directional finite difference (the picks do not change for a
    # small step on these tie-free random embeddings).
    direction = {k: jnp.asarray(np.random.default_rng(2).normal(size=v.shape), jnp.float32)
                 for k, v in out.items()}
    eps = 1e-2
    plus = fn({k: out[k] + eps * direction[k] for k in out})
    minus = fn({k: out[k] - eps * direction[k] for k in out})
    numeric = (plus - minus) / (2 * eps)
    analytic = sum(jnp.sum(grads[k] * direction[k]) for k in out)
    np.testing.assert_allclose(float(analytic), float(numeric), rtol=2e-3)

  def test_jit_matches_eager(self):
    out, labels = random_outputs(4), jnp.array([0, 1, 2, 0, 1, 2])
    eager = losses.compute_loss(out, labels, loss_config(), "gating", "av")[1]
    jitted = jax.jit(lambda o, l: losses.compute_loss(o, l, loss_config(), "gating", "av"))(
        out, labels)[1]
    for k in eager:
      self.assertAlmostEqual(float(eager[k]), float(jitted[k]), places=5, msg=k)

  def test_sharded_batch_is_mined_globally(self):
    # Data parallelism: the batch sharded over 4 (host CPU) devices gives the loss
    # and gradients of the unsharded batch (mining sees the whole global batch).
    if jax.device_count() < 4:
      self.skipTest("needs 4 devices (conftest.py sets XLA_FLAGS)")
    mesh = jax.sharding.Mesh(np.asarray(jax.devices()[:4]), ("data",))
    data = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
    out, labels = random_outputs(5, n=8), jnp.array([0, 1, 2, 3, 0, 1, 2, 3])
    fn = jax.jit(jax.value_and_grad(
        lambda o, l: losses.compute_loss(o, l, loss_config(), "gating", "av")[0]))
    loss, grads = fn(out, labels)
    loss_s, grads_s = fn({k: jax.device_put(v, data) for k, v in out.items()},
                         jax.device_put(labels, data))
    self.assertAlmostEqual(float(loss_s), float(loss), places=4)
    for k in grads:
      np.testing.assert_allclose(grads_s[k], grads[k], rtol=1e-5, atol=1e-6, err_msg=k)

  def test_errors(self):
    out = hand_outputs()
    with self.assertRaisesRegex(ValueError, "variant"):
      losses.compute_loss(out, LABELS, loss_config(), "transformer", "av")
    with self.assertRaisesRegex(ValueError, "gating.*needs both modalities"):
      losses.compute_loss(out, LABELS, loss_config(), "gating", "audio")
    with self.assertRaisesRegex(ValueError, "lack"):
      losses.compute_loss({"audio_gate": out["audio_gate"]}, LABELS, loss_config(), "lstm", "av")


if __name__ == "__main__":
  absltest.main()
