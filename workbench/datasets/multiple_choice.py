"""Small multiple-choice tasks for ACT's attention calibration, each split into a
calibration split (the head search) and a disjoint held-out split (the reported figures).
Every option is one token with a leading space and is scored by its next-token logit, the
way lm-eval scores multiple choice and ACT scores its classification labels.

- ``sequence`` (81 questions, 4 options): the successor/predecessor of a month, a weekday or a
  letter, from ``calendar`` and ``string``, after three worked examples:
  "... The month that comes right after March is" -> " April" vs " July", " January", " May".
  The pool is too small for a 200-question held-out split; kept for small runs.
- ``category`` (340 words, 4 options): the category of a common word, after three examples,
  "dog -> animal\\nbanana -> fruit\\nred -> color\\nhammer ->" -> " tool" vs three other of the
  16 categories. Each word is one question, so the splits share no word.
- ``sentiment`` (1,000 sentences, 2 options): a templated review, "Review: The hotel was
  dreadful.\\nSentiment:" -> " negative" vs " positive", after two examples (the SST-2 style
  of ACT's classification tasks). Split by adjective: the calibration split's 10 adjectives
  never occur in the held-out split (its other 40 adjectives x 20 subjects).

(A letter-answer format with the options listed puts a 135M model at chance; these score the
option words themselves.)
"""
from __future__ import annotations

import calendar
import random
import string
from dataclasses import dataclass
from typing import Any

from ..errors import InputError

TASKS = ("sequence", "category", "sentiment")


@dataclass
class MCQuestion:
    prompt: str
    label: int  # index of the correct option
    options: list[str]
    kind: str
    task: str = "sequence"
    group: str = ""  # questions of one group (a word, an adjective) are never split apart


# ---------------------------------------------------------------------------- sequence
def _sequences() -> dict[str, list[str]]:
    return {
        "month": [calendar.month_name[i] for i in range(1, 13)],
        "day": [calendar.day_name[i] for i in range(7)],
        "letter": list(string.ascii_uppercase),
    }


SHOTS = ("The month that comes right after May is June.",
         "The day of the week that comes right before Friday is Thursday.",
         "The letter of the alphabet that comes right after K is L.")
_SHOT_ITEMS = {("month-after", "May"), ("day-before", "Friday"), ("letter-after", "K")}
_UNITS = {"month": "month", "day": "day of the week", "letter": "letter of the alphabet"}


def all_questions() -> list[tuple[str, str, str, list[str]]]:
    """Every (kind, cloze sentence, answer, distractor pool) the sequence task can ask, in a
    fixed order, minus the worked examples. The pool leaves out the answer and the item
    asked about (a copy of it would be a free lure)."""
    out = []
    for kind, seq in _sequences().items():
        for i, item in enumerate(seq):
            for where, j in (("after", i + 1), ("before", i - 1)):
                if not 0 <= j < len(seq) or (f"{kind}-{where}", item) in _SHOT_ITEMS:
                    continue
                sentence = f"The {_UNITS[kind]} that comes right {where} {item} is"
                out.append((f"{kind}-{where}", sentence, seq[j], [x for x in seq if x not in (item, seq[j])]))
    return out


def _format(sentence: str) -> str:
    return " ".join(SHOTS) + " " + sentence


def mc_splits(n_calib: int, n_heldout: int, seed: int = 0) -> tuple[list[MCQuestion], list[MCQuestion]]:
    """Disjoint calibration and held-out splits of the sequence task (distinct questions),
    options shuffled by seed."""
    pool = all_questions()
    if n_calib < 1 or n_heldout < 1:
        raise InputError("both splits need at least one question; raise --n-calib / --n-heldout")
    if n_calib + n_heldout > len(pool):
        raise InputError(f"the task has {len(pool)} questions; ask for at most that many in total (calibration + held-out)")
    rng = random.Random(seed)
    order = list(range(len(pool)))
    rng.shuffle(order)
    made = []
    for idx in order[: n_calib + n_heldout]:
        kind, question, answer, others = pool[idx]
        distractors = rng.sample(others, 3)
        options = distractors + [answer]
        rng.shuffle(options)
        made.append(MCQuestion(_format(question), options.index(answer), options, kind, "sequence", question))
    return made[:n_calib], made[n_calib:]


# ---------------------------------------------------------------------------- category
CATEGORIES: dict[str, tuple[str, ...]] = {
    "animal": tuple("dog cat horse cow lion tiger bear wolf fox rabbit mouse sheep goat pig deer monkey elephant zebra "
                    "giraffe camel snake frog duck eagle owl whale shark dolphin bee ant spider chicken donkey rat "
                    "turtle kangaroo squirrel leopard hippo crocodile parrot".split()),
    "fruit": tuple("banana apple orange grape lemon cherry peach pear plum mango melon kiwi lime apricot coconut "
                   "strawberry pineapple raspberry blueberry watermelon papaya fig".split()),
    "vegetable": tuple("carrot potato onion cabbage lettuce spinach broccoli cucumber garlic celery radish turnip beet "
                       "eggplant cauliflower zucchini asparagus leek".split()),
    "color": tuple("red blue green yellow purple pink brown black white gray indigo crimson scarlet magenta cyan beige "
                   "maroon turquoise".split()),
    "country": tuple("France Germany Spain Italy Japan China India Brazil Canada Mexico Russia Egypt Kenya Peru Chile "
                     "Norway Sweden Poland Greece Turkey Iran Iraq Cuba Ireland Portugal Austria Belgium Denmark "
                     "Finland Vietnam Thailand Nigeria Argentina Australia Colombia Pakistan Ethiopia Morocco Hungary "
                     "Switzerland".split()),
    "city": tuple("Paris London Tokyo Berlin Madrid Rome Moscow Cairo Beijing Sydney Chicago Boston Toronto Dublin "
                  "Vienna Prague Athens Lisbon Seoul Bangkok Istanbul Mumbai Delhi Nairobi Lima Oslo Stockholm Warsaw "
                  "Amsterdam Barcelona".split()),
    "vehicle": tuple("car bus truck train bicycle motorcycle boat ship plane helicopter taxi van tractor scooter tram "
                     "subway yacht canoe jeep ambulance".split()),
    "sport": tuple("football soccer tennis golf baseball basketball hockey rugby boxing swimming volleyball wrestling "
                   "skiing cycling surfing rowing fencing archery badminton".split()),
    "clothing": tuple("shirt dress skirt jacket coat sweater hat scarf sock shoe boot glove jeans blouse vest tie belt "
                      "hoodie pajamas".split()),
    "instrument": tuple("piano guitar violin drum flute trumpet cello harp saxophone clarinet trombone banjo ukulele "
                        "accordion harmonica oboe tuba".split()),
    "tool": tuple("hammer saw drill wrench screwdriver chisel pliers axe shovel rake ladder crowbar mallet trowel "
                  "spade sandpaper".split()),
    "drink": tuple("water milk tea coffee juice beer wine soda lemonade whiskey vodka cocoa rum champagne".split()),
    "metal": tuple("iron gold silver copper tin zinc aluminum nickel platinum bronze brass".split()),
    "job": tuple("doctor teacher nurse lawyer farmer pilot chef plumber carpenter electrician dentist baker butcher "
                 "mechanic engineer firefighter policeman soldier journalist accountant architect cashier waiter "
                 "librarian surgeon pharmacist janitor banker".split()),
    "furniture": tuple("chair table sofa bed desk shelf cabinet stool bench couch wardrobe dresser bookcase armchair "
                       "cupboard nightstand".split()),
    "flower": tuple("rose tulip daisy lily orchid sunflower daffodil lavender jasmine carnation marigold poppy "
                    "dandelion peony".split()),
}
CATEGORY_SHOTS = (("dog", "animal"), ("banana", "fruit"), ("red", "color"))


def category_items() -> list[tuple[str, str]]:
    """Every (word, category) the category task asks, in a fixed order, minus the worked examples."""
    shots = {w for w, _ in CATEGORY_SHOTS}
    return [(w, c) for c, words in CATEGORIES.items() for w in words if w not in shots]


def _category_prompt(word: str) -> str:
    return "".join(f"{w} -> {c}\n" for w, c in CATEGORY_SHOTS) + f"{word} ->"


# ---------------------------------------------------------------------------- sentiment
POSITIVE = tuple("wonderful great excellent amazing fantastic delightful lovely superb brilliant perfect pleasant "
                 "enjoyable charming beautiful outstanding terrific marvelous fabulous impressive splendid good nice "
                 "awesome cheerful friendly".split())
NEGATIVE = tuple("terrible awful horrible dreadful disappointing bad poor disgusting miserable unpleasant annoying "
                 "mediocre lousy rude dirty ugly painful useless pathetic awkward noisy broken stale dull "
                 "tedious".split())
SUBJECTS = ("The food", "The movie", "The service", "The hotel", "The book", "The staff", "The music", "The room",
            "The game", "The show", "The coffee", "The trip", "The class", "The phone", "The concert", "The view",
            "The car", "The meal", "The album", "The party")
SENTIMENT_SHOTS = (("The pizza was delicious.", "positive"), ("The film was boring.", "negative"))
SENTIMENT_CALIB_ADJECTIVES = 5  # per polarity: the calibration split's adjectives


def _sentiment_prompt(sentence: str) -> str:
    return "".join(f"Review: {s}\nSentiment: {lab}\n" for s, lab in SENTIMENT_SHOTS) + f"Review: {sentence}\nSentiment:"


# ---------------------------------------------------------------------------- all tasks
def capacity(task: str) -> tuple[int, int, int]:
    """(most calibration questions, most held-out questions, most in total) of a task."""
    if task == "sequence":
        n = len(all_questions())
        return n - 1, n - 1, n
    if task == "category":
        n = len(category_items())
        return n - 1, n - 1, n
    if task == "sentiment":
        calib = 2 * SENTIMENT_CALIB_ADJECTIVES * len(SUBJECTS)
        held = (len(POSITIVE) + len(NEGATIVE) - 2 * SENTIMENT_CALIB_ADJECTIVES) * len(SUBJECTS)
        return calib, held, calib + held
    raise InputError(f"unknown task '{task}'; choose one of {', '.join(TASKS)}")


def n_options(task: str) -> int:
    """Options per question (chance accuracy is one over this)."""
    if task not in TASKS:
        raise InputError(f"unknown task '{task}'; choose one of {', '.join(TASKS)}")
    return 2 if task == "sentiment" else 4


def check_sizes(task: str, n_calib: int, n_heldout: int) -> None:
    """One-line error, with the fix, when a task cannot give splits of these sizes."""
    most_calib, most_held, most = capacity(task)
    if n_calib < 1 or n_heldout < 1:
        raise InputError("both splits need at least one question; raise --n-calib / --n-heldout")
    if n_heldout > most_held:
        fit = min(most_held, most - min(n_calib, most_calib))
        raise InputError(f"--n-heldout {n_heldout} is more than the {task} task's held-out split holds ({most_held}); "
                         f"choose --n-heldout {fit} or less")
    if n_calib > most_calib or n_calib + n_heldout > most:
        fit = min(most_calib, most - n_heldout)
        raise InputError(f"--n-calib {n_calib} with --n-heldout {n_heldout} asks for more than the {task} task holds "
                         f"({most_calib} calibration, {most} in all); choose --n-calib {fit} or less")


def task_splits(task: str, n_calib: int, n_heldout: int, seed: int = 0) -> tuple[list[MCQuestion], list[MCQuestion]]:
    """Disjoint calibration and held-out splits of ``task`` (no group in both), by seed."""
    check_sizes(task, n_calib, n_heldout)
    if task == "sequence":
        return mc_splits(n_calib, n_heldout, seed)
    rng = random.Random(f"{task}-{seed}")
    if task == "category":
        items = category_items()
        rng.shuffle(items)
        made = []
        for word, cat in items[: n_calib + n_heldout]:
            options = rng.sample([c for c in CATEGORIES if c != cat], 3) + [cat]
            rng.shuffle(options)
            made.append(MCQuestion(_category_prompt(word), options.index(cat), options, cat, task, word))
        return made[:n_calib], made[n_calib:]
    pos, neg = list(POSITIVE), list(NEGATIVE)
    rng.shuffle(pos)
    rng.shuffle(neg)
    k = SENTIMENT_CALIB_ADJECTIVES

    def draw(adjectives: list[tuple[str, int]], n: int) -> list[MCQuestion]:
        grid = [(s, a, lab) for a, lab in adjectives for s in SUBJECTS]
        out = []
        for s, a, lab in rng.sample(grid, n):
            out.append(MCQuestion(_sentiment_prompt(f"{s} was {a}."), lab, ["positive", "negative"],
                                  ("positive", "negative")[lab], task, a))
        return out

    calib = draw([(a, 0) for a in pos[:k]] + [(a, 1) for a in neg[:k]], n_calib)
    held = draw([(a, 0) for a in pos[k:]] + [(a, 1) for a in neg[k:]], n_heldout)
    return calib, held


def option_token_ids(tokenizer: Any, question: MCQuestion) -> list[int]:
    """Ids of the option words with a leading space (each must be one token)."""
    from ..tokens import single_token_id

    return [single_token_id(tokenizer, " " + o) for o in question.options]
