"""A small synthetic corpus for the Bayes tests: two vocabularies that barely overlap."""

from __future__ import annotations

import random

SPAM_WORDS = ("viagra", "lottery", "winner", "millions", "casino", "cheap", "pills",
              "refinance", "mortgage", "guaranteed", "unclaimed", "prize", "bonus")
HAM_WORDS = ("meeting", "patch", "kernel", "review", "agenda", "tomorrow", "release",
             "compiler", "thanks", "minutes", "budget", "project", "deadline")
COMMON = ("the", "and", "you", "with", "this", "please", "today")


def make_message(spam: bool, n: int, seed: int = 0) -> bytes:
    """A plain message with words drawn mostly from one class's vocabulary."""
    rng = random.Random(f"{spam}-{n}-{seed}")
    own = SPAM_WORDS if spam else HAM_WORDS
    words = [rng.choice(own) for _ in range(30)] + [rng.choice(COMMON) for _ in range(10)]
    rng.shuffle(words)
    sender = "offers@promo.example" if spam else "alice@lists.example.org"
    subject = " ".join(rng.choice(own) for _ in range(3))
    return (
        f"From: {sender}\nTo: bob@example.com\nSubject: {subject}\n"
        f"Message-ID: <{n}.{seed}.{int(spam)}@{'promo' if spam else 'lists'}.example>\n\n"
        + " ".join(words) + "\n"
    ).encode()
