"""The experiments behind the README's evidence: the studies (:mod:`.study`, reported by :mod:`.study_report`),
the day -> dusk adaptation benchmark (:mod:`.adaptation_benchmark`), and what they share (:mod:`.harness`).

They build on the application layer (:mod:`hf_reward.cli`) and the library; nothing below imports them.
"""
