"""A small CoT corpus generated on the spot, so training needs no download.

Five BIG-Bench-Hard-like algorithmic task families, each question written in the style of the BBH
task of the same kind and each rationale produced by an exact solver that shows its work one step
at a time (innermost bracket first, operator precedence respected, one symbol per line, ...). The
answer is the solver's result and every rationale ends with "So the answer is <answer>." (as the
BBH teacher rationales do). Rationales stay short (well under 200 tokens) so that a CPU run with a
135M student is quick.

Generation is deterministic: each task draws from its own ``random.Random`` seeded by (seed, task),
so a task's rows do not depend on which other tasks are requested. Questions are unique within a
task; ``index`` numbers the rows of a task from 0.

``load_cot_corpus("builtin")`` in :mod:`slowed.data` returns ``builtin_cot_corpus()`` with its
defaults; call this function directly for other sizes, seeds or task subsets.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence

import datasets

from slowed.prompting import ANSWER_SENTENCE
from slowed.schema import CANONICAL_FEATURES

Example = tuple[str, str, str]  # (question, rationale, answer)


# ---------------------------------------------------------------- multistep arithmetic


def _apply(left: int, operator: str, right: int) -> int:
    return left * right if operator == "*" else left + right if operator == "+" else left - right


def _format_terms(numbers: list[int], operators: list[str]) -> str:
    """``(a + b * c)`` for several terms, the bare number for one."""
    if not operators:
        return str(numbers[0])
    parts = [str(numbers[0])]
    for operator, number in zip(operators, numbers[1:], strict=True):
        parts += [operator, str(number)]
    return "(" + " ".join(parts) + ")"


def _arithmetic_steps(numbers: list[int], operators: list[str]) -> tuple[list[str], int]:
    """Every intermediate expression of a bracket (first multiplication first, else leftmost op), and the value."""
    numbers, operators = list(numbers), list(operators)
    steps = [_format_terms(numbers, operators)]
    while operators:
        at = operators.index("*") if "*" in operators else 0
        numbers[at : at + 2] = [_apply(numbers[at], operators[at], numbers[at + 1])]
        del operators[at]
        steps.append(_format_terms(numbers, operators))
    return steps, numbers[0]


def _multistep_arithmetic(rng: random.Random) -> Example:
    groups = [
        ([rng.randint(-9, 9) for _ in range(4)], [rng.choice("+-*") for _ in range(3)]) for _ in range(2)
    ]
    outer = rng.choice("+-*")
    (a_numbers, a_operators), (b_numbers, b_operators) = groups
    a_text, b_text = _format_terms(a_numbers, a_operators), _format_terms(b_numbers, b_operators)
    a_steps, a = _arithmetic_steps(a_numbers, a_operators)
    b_steps, b = _arithmetic_steps(b_numbers, b_operators)
    answer = str(_apply(a, outer, b))
    rationale = "\n".join(
        [
            f'This equation is "A {outer} B" with A = {a_text} and B = {b_text}. '
            "Inside a bracket, multiplication comes before addition and subtraction.",
            f"Let's calculate A = {' = '.join(a_steps)}.",
            f"Let's calculate B = {' = '.join(b_steps)}.",
            f"Then, the final equation is A {outer} B = {a} {outer} {b} = {answer}. "
            + ANSWER_SENTENCE.format(answer=answer),
        ]
    )
    return f"({a_text} {outer} {b_text}) =", rationale, answer


# ---------------------------------------------------------------- boolean expressions

_BOOLEANS = ("True", "False")


def _flat_boolean_step(tokens: list[str]) -> list[str]:
    """One reduction of a bracket-free expression: a ``not`` first, then an ``and``, then an ``or``."""
    for at in range(len(tokens) - 1):
        if tokens[at] == "not" and tokens[at + 1] in _BOOLEANS:
            return [*tokens[:at], _BOOLEANS[tokens[at + 1] == "True"], *tokens[at + 2 :]]
    for operator in ("and", "or"):
        for at in range(1, len(tokens) - 1):
            if tokens[at] == operator and tokens[at - 1] in _BOOLEANS and tokens[at + 1] in _BOOLEANS:
                left, right = tokens[at - 1] == "True", tokens[at + 1] == "True"
                value = (left and right) if operator == "and" else (left or right)
                return [*tokens[: at - 1], str(value), *tokens[at + 2 :]]
    raise ValueError(f"cannot reduce {' '.join(tokens)!r}")


def _boolean_step(tokens: list[str]) -> list[str]:
    """One reduction: inside the first innermost bracket (dropping it once it holds one value), else flat."""
    for start, token in enumerate(tokens):
        if token != "(":
            continue
        end = start + 1
        while tokens[end] not in ("(", ")"):
            end += 1
        if tokens[end] == ")":
            inner = tokens[start + 1 : end]
            if len(inner) == 1:
                return [*tokens[:start], *inner, *tokens[end + 1 :]]
            return [*tokens[: start + 1], *_flat_boolean_step(inner), *tokens[end:]]
    return _flat_boolean_step(tokens)


def _boolean_operand(rng: random.Random) -> list[str]:
    operand = ["not"] * rng.choice((0, 0, 1, 2)) + [rng.choice(_BOOLEANS)]
    return ["(", *operand, ")"] if rng.random() < 0.3 else operand


def _boolean_expressions(rng: random.Random) -> Example:
    operands = [_boolean_operand(rng) for _ in range(rng.randint(2, 3))]
    connectives = [rng.choice(("and", "or")) for _ in operands[1:]]
    if len(operands) == 3 and rng.random() < 0.5:
        at = rng.randint(0, 1)
        bracket = ["(", *operands[at], connectives.pop(at), *operands[at + 1], ")"]
        operands[at : at + 2] = [["not"] * rng.choice((0, 1)) + bracket]
    tokens = list(operands[0])
    for connective, operand in zip(connectives, operands[1:], strict=True):
        tokens += [connective, *operand]
    steps = [tokens]
    while len(steps[-1]) > 1:
        steps.append(_boolean_step(steps[-1]))
    answer = steps[-1][0]
    rationale = "\n".join(
        [
            'Brackets are evaluated first; then "not", then "and", then "or". One step at a time:',
            "Z = " + " ".join(steps[0]),
            *("= " + " ".join(step) for step in steps[1:]),
            ANSWER_SENTENCE.format(answer=answer),
        ]
    )
    return " ".join(tokens) + " is", rationale, answer


# ---------------------------------------------------------------- object counting

# (singular, plural) nouns per category; a question about "objects" lists household objects only.
COUNTING_LEXICON: dict[str, tuple[tuple[str, str], ...]] = {
    "fruits": (
        ("apple", "apples"),
        ("banana", "bananas"),
        ("blackberry", "blackberries"),
        ("grape", "grapes"),
        ("nectarine", "nectarines"),
        ("orange", "oranges"),
        ("peach", "peaches"),
        ("plum", "plums"),
        ("raspberry", "raspberries"),
        ("strawberry", "strawberries"),
    ),
    "vegetables": (
        ("cabbage", "cabbages"),
        ("carrot", "carrots"),
        ("cauliflower", "cauliflowers"),
        ("onion", "onions"),
        ("potato", "potatoes"),
        ("yam", "yams"),
        ("lettuce", "lettuces"),
        ("zucchini", "zucchinis"),
    ),
    "animals": (
        ("cat", "cats"),
        ("cow", "cows"),
        ("dog", "dogs"),
        ("donkey", "donkeys"),
        ("duck", "ducks"),
        ("frog", "frogs"),
        ("goat", "goats"),
        ("mouse", "mice"),
        ("pig", "pigs"),
        ("rabbit", "rabbits"),
        ("snail", "snails"),
    ),
    "musical instruments": (
        ("accordion", "accordions"),
        ("clarinet", "clarinets"),
        ("drum", "drums"),
        ("flute", "flutes"),
        ("piano", "pianos"),
        ("trombone", "trombones"),
        ("trumpet", "trumpets"),
        ("violin", "violins"),
    ),
    "objects": (
        ("bed", "beds"),
        ("car", "cars"),
        ("chair", "chairs"),
        ("couch", "couches"),
        ("fridge", "fridges"),
        ("lamp", "lamps"),
        ("microwave", "microwaves"),
        ("oven", "ovens"),
        ("stove", "stoves"),
        ("table", "tables"),
        ("toaster", "toasters"),
    ),
}
NUMBER_WORDS = ("one", "two", "three", "four", "five")


def _count_phrase(quantity: int, noun: tuple[str, str]) -> str:
    singular, plural = noun
    if quantity > 1:
        return f"{NUMBER_WORDS[quantity - 1]} {plural}"
    return f"{'an' if singular[0] in 'aeiou' else 'a'} {singular}"


def _object_counting(rng: random.Random) -> Example:
    category = rng.choice(tuple(COUNTING_LEXICON))
    targets = rng.sample(COUNTING_LEXICON[category], rng.randint(2, 5))
    others: list[tuple[str, str]] = []
    if category != "objects":
        pool = [
            noun
            for name, nouns in COUNTING_LEXICON.items()
            if name not in (category, "objects")
            for noun in nouns
        ]
        others = rng.sample(pool, rng.randint(0, 4))
    items = [(noun, rng.choice((1, 1, 1, 1, 2, 3, 4, 5)), noun in targets) for noun in targets + others]
    rng.shuffle(items)
    phrases = [_count_phrase(quantity, noun) for noun, quantity, _ in items]
    listing = (
        f"{phrases[0]} and {phrases[1]}"
        if len(phrases) == 2
        else ", ".join(phrases[:-1]) + f", and {phrases[-1]}"
    )
    counted = [(noun[quantity > 1], quantity) for noun, quantity, is_target in items if is_target]
    answer = str(sum(quantity for _, quantity in counted))
    rationale = "\n".join(
        [
            f"We first identify the {category} on the list and include their quantity in parentheses:",
            *(f"- {name} ({quantity})" for name, quantity in counted),
            "Now, let's add the numbers in parentheses: "
            + " + ".join(str(quantity) for _, quantity in counted)
            + f" = {answer}. "
            + ANSWER_SENTENCE.format(answer=answer),
        ]
    )
    return f"I have {listing}. How many {category} do I have?", rationale, answer


# ---------------------------------------------------------------- word sorting

_SORTING_WORD_TEXT = """
    anchor apple arson aspect autumn bakery banner barn basket beacon bishop blanket border bottle cabin
    camel candle canvas carbon carpet castle census cobalt comet copper costume cotton counter
    counterpart credulity crystal dagger damp delta desert dolphin dragon eagle easel echo elbow ember
    engine falcon feather ferry fiddle forest fossil gadget garden garlic ginger glacier granite gravel
    hammer harbor harvest helmet hollow island ivory jacket jasmine jungle kettle kernel ladder lantern
    lemon lizard magnet mantle marble meadow mirror mugho napkin needle newt nickel oasis orbit oven
    oyster paddle parthia pebble pepper phone pillow planet pocket ponderosa quarry quiver rabbit radish
    raven ribbon saddle salmon seismography shadow silver socket spider spiral statue tablet temple
    thunder timber tunnel umbrella valley velvet walnut window winter yarrow zenith
"""
SORTING_WORDS = tuple(_SORTING_WORD_TEXT.split())


def _common_prefix(words: Sequence[str]) -> str:
    first, last = min(words), max(words)
    size = next(
        (at for at, (a, b) in enumerate(zip(first, last, strict=False)) if a != b), min(len(first), len(last))
    )
    return first[:size]


def _order_group(words: list[str], lines: list[str]) -> list[str]:
    """Sort words sharing a common prefix by their next letter, appending one explanation line per tie group."""
    prefix = _common_prefix(words)
    position = len(prefix)

    def key(word: str) -> str:
        return word[position] if len(word) > position else ""  # a word that ends here comes first

    lead = f'Words starting with "{prefix}", by letter {position + 1}: ' if prefix else "First letters: "
    shown = ", ".join(f'"{word}" ({key(word) or "end"})' for word in words)
    buckets = sorted({key(word) for word in words})
    groups = [[word for word in words if key(word) == letter] for letter in buckets]
    order = " < ".join(
        f'"{g[0]}"' if len(g) == 1 else "[" + " ? ".join(f'"{w}"' for w in g) + "]" for g in groups
    )
    lines.append(f"{lead}{shown}, so {order}.")
    ordered: list[str] = []
    for group in groups:
        ordered += group if len(group) == 1 else _order_group(group, lines)
    return ordered


def _word_sorting(rng: random.Random) -> Example:
    words = rng.sample(SORTING_WORDS, rng.randint(3, 6))
    lines: list[str] = []
    answer = " ".join(_order_group(words, lines))
    rationale = "\n".join(
        [*lines, f"Hence the sorted list is: {answer}. " + ANSWER_SENTENCE.format(answer=answer)]
    )
    return f"Sort the following words alphabetically: List: {' '.join(words)}", rationale, answer


# ---------------------------------------------------------------- dyck languages

_CLOSING = {"(": ")", "[": "]", "{": "}", "<": ">"}


def _dyck_languages(rng: random.Random) -> Example:
    symbols: list[str] = []
    stack: list[str] = []
    lines = [
        "We process the symbols one by one and keep track of the stack of open brackets.",
        "0: empty stack",
    ]
    for step in range(1, rng.randint(3, 8) + 1):
        if stack and rng.random() < 0.4:
            symbols.append(_CLOSING[stack.pop()])
        else:
            symbols.append(rng.choice(tuple(_CLOSING)))
            stack.append(symbols[-1])
        lines.append(f"{step}: {symbols[-1]} ; stack: {' '.join(stack) or 'empty'}")
    if not stack:
        symbols.append(rng.choice(tuple(_CLOSING)))
        stack.append(symbols[-1])
        lines.append(f"{len(symbols)}: {symbols[-1]} ; stack: {stack[0]}")
    answer = " ".join(_CLOSING[opening] for opening in reversed(stack))
    lines += [
        f'Now, we have reached the end. The final stack is "{" ".join(stack)}".',
        f"Closing it from the top needs: {answer}. " + ANSWER_SENTENCE.format(answer=answer),
    ]
    question = (
        "Complete the rest of the sequence, making sure that the parentheses are closed properly. "
        f"Input: {' '.join(symbols)}"
    )
    return question, "\n".join(lines), answer


# ---------------------------------------------------------------- the corpus

_GENERATORS: dict[str, Callable[[random.Random], Example]] = {
    "multistep_arithmetic": _multistep_arithmetic,
    "boolean_expressions": _boolean_expressions,
    "object_counting": _object_counting,
    "word_sorting": _word_sorting,
    "dyck_languages": _dyck_languages,
}
BUILTIN_TASKS: tuple[str, ...] = tuple(_GENERATORS)


def builtin_cot_corpus(
    num_per_task: int = 64, seed: int = 0, tasks: Sequence[str] | None = None
) -> datasets.Dataset:
    """``num_per_task`` unique solved examples per task (all of BUILTIN_TASKS by default), canonical columns.

    Rows come task by task in the order of ``tasks``, index 0..num_per_task-1 within each task.
    """
    if isinstance(num_per_task, bool) or not isinstance(num_per_task, int) or num_per_task < 1:
        raise ValueError(f"num_per_task must be a positive integer, got {num_per_task!r}")
    if isinstance(tasks, str):
        raise TypeError(f"tasks must be a list of task names, got the string {tasks!r}; write [{tasks!r}]")
    chosen = list(dict.fromkeys(BUILTIN_TASKS if tasks is None else tasks))
    unknown = [task for task in chosen if task not in _GENERATORS]
    if unknown or not chosen:
        raise ValueError(
            f"unknown built-in tasks {unknown or '(none given)'}; choose from {list(BUILTIN_TASKS)}"
        )
    rows: dict[str, list] = {name: [] for name in CANONICAL_FEATURES}
    for task in chosen:
        for index, (question, rationale, answer) in enumerate(_unique_examples(task, num_per_task, seed)):
            for name, value in zip(
                CANONICAL_FEATURES, (question, rationale, answer, task, index), strict=True
            ):
                rows[name].append(value)
    return datasets.Dataset.from_dict(rows, features=CANONICAL_FEATURES)


def _unique_examples(task: str, count: int, seed: int) -> list[Example]:
    rng = random.Random(f"slowed-builtin:{seed}:{task}")
    examples: dict[str, Example] = {}
    for _ in range(100 * count):
        example = _GENERATORS[task](rng)
        examples.setdefault(example[0], example)
        if len(examples) == count:
            return list(examples.values())
    raise ValueError(f"built-in task {task!r} could not produce {count} distinct questions; ask for fewer")
