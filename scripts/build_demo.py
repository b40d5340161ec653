"""Build the embedded demo sample: chat conversations and a small demo tokenizer.

Run ``python scripts/build_demo.py`` from the repository root to regenerate everything under
``collate_assets/sample/`` (or pass ``--out DIR`` to build elsewhere). The script lives outside the
package, so an install ships the sample files but not their builder. The text is original,
written for this project: hand-written topic templates and phrase banks, combined by a
``random.Random`` with a fixed seed, so the same code always writes the same bytes.

What it writes:

- ``conversations/demo.jsonl`` (~300 conversations) and ``conversations/demo_small.jsonl`` (~40):
  one JSON object per line, using the three input shapes the reader accepts (``conversation``,
  ``messages`` with role/content, ShareGPT ``conversations`` with from/value).
- ``tokenizer/``: a byte-level BPE trained on the rendered sample, wrapped in
  ``transformers.PreTrainedTokenizerFast`` with a ChatML chat template.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import shutil
import textwrap
from collections.abc import Sequence
from pathlib import Path

# The package's sample folder, found from this file (scripts/ sits beside collate_assets/), so the
# script writes into the checkout it belongs to whatever the current directory is.
SAMPLE_DIR = Path(__file__).resolve().parent.parent / "collate_assets" / "sample"

SEED = 20250611
MAIN_COUNT = 300
MAIN_LONG = 9
SMALL_COUNT = 40
SMALL_LONG = 1
VOCAB_SIZE = 4096
SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|pad|>")
MODEL_MAX_LENGTH = 8192

CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}"
    "{{- '<|im_start|>assistant\\n' }}"
    "{%- endif %}"
)

Turn = tuple[str, str]  # (user, assistant)


def dedent(text: str) -> str:
    return textwrap.dedent(text).strip("\n")


def pick(rng: random.Random, seq: Sequence):
    return seq[rng.randrange(len(seq))]


def join_list(items: Sequence[str]) -> str:
    items = list(items)
    if len(items) == 1:
        return items[0]
    return ", ".join(items[:-1]) + " and " + items[-1]


def bullets(items: Sequence[str]) -> str:
    return "\n".join(f"- {item}" for item in items)


def numbered(items: Sequence[str]) -> str:
    return "\n".join(f"{i}. {item}" for i, item in enumerate(items, 1))


def money(x: float, sign: str = "$") -> str:
    return f"{sign}{x:,.2f}"


def num(x: float, digits: int = 2) -> str:
    """A number without trailing zeros: 3, 2.5, 0.75."""
    text = f"{x:.{digits}f}".rstrip("0").rstrip(".")
    return text if text != "-0" else "0"


# ---------------------------------------------------------------------------------------------
# Generic follow-ups, used when a topic runs out of its own.

WELCOMES = (
    "You're welcome! Let me know if anything else comes up.",
    "Glad it helped. Feel free to ask if you want to go further.",
    "Happy to help! If you try it, I'd be curious how it goes.",
    "Any time. Good luck with it!",
    "You're welcome — have fun with it!",
)
THANKS = (
    "Thanks, that's really helpful.",
    "Perfect, thank you!",
    "Great, thanks a lot.",
    "That makes sense now, thanks.",
    "Awesome, thank you so much! 🙏",
)


def first_sentences(text: str, count: int = 1) -> str:
    """The first prose sentences of an answer, skipping code, lists, sums and short lines."""
    sentences: list[str] = []
    in_code = False
    for line in text.splitlines():
        if line.startswith("```"):
            in_code = not in_code
            continue
        line = line.strip()
        if (
            in_code
            or len(line.split()) < 5
            or line[0] in "-#|*"
            or line[0].isdigit()
            or line.endswith(":")
            or any(sym in line for sym in ("=", "×", "÷", "Subject:"))
        ):
            continue
        start = 0
        for i, ch in enumerate(line):
            at_end = i + 1 == len(line) or line[i + 1] == " "
            # Not after an initial such as "F. W. de Klerk" or an abbreviation such as "Dr.".
            word = line[start:i].rsplit(" ", 1)[-1]
            if ch in ".!?" and at_end and not (ch == "." and (len(word) <= 1 or word in ("Dr", "e.g", "i.e", "vs"))):
                sentences.append(line[start : i + 1].strip())
                start = i + 1
                if len(sentences) == count:
                    return " ".join(sentences)
    return " ".join(sentences)


def is_substantive(answer: str) -> bool:
    return answer not in WELCOMES and not answer.startswith(("The key point:", "Here's a recap"))


def generic_followup(rng: random.Random, turns: list[Turn]) -> Turn:
    """A follow-up that fits after any answer: a one-line summary, thanks, or a recap."""
    last_user, last_answer = turns[-1]
    # Only answers with a few prose sentences are worth summing up.
    summary = first_sentences(last_answer, 1) if is_substantive(last_answer) and first_sentences(last_answer, 3).count(". ") >= 2 else ""
    answered: list[str] = []
    for _, answer in turns:
        first = first_sentences(answer, 1) if is_substantive(answer) else ""
        if first and first not in answered:
            answered.append(first)
    options = []
    if summary:
        options.append("summary")
    if last_user not in THANKS:
        options.append("thanks")
    if len(answered) >= 2 and not any(a.startswith("Here's a recap") for _, a in turns):
        options.append("recap")
    kind = pick(rng, options) if options else "more"
    if kind == "summary":
        ask = pick(rng, ("Can you sum that up in one sentence?", "What's the one thing I should remember from that?", "TL;DR?", "If I only remember one thing, what should it be?"))
        return ask, f"The key point: {summary}"
    if kind == "thanks":
        return pick(rng, THANKS), pick(rng, WELCOMES)
    if kind == "recap":
        return "Can you give me a quick recap of everything we covered?", "Here's a recap:\n\n" + bullets(answered)
    return (
        "Where can I learn more about this?",
        "A good next step is to try it yourself on a small example, then read the official documentation or a well-reviewed introductory book on the subject.",
    )


def fill(
    rng: random.Random, turns: list[Turn], followups: Sequence[Turn], n: int, switches: Sequence[Turn] = ()
) -> list[Turn]:
    """Extend ``turns`` to ``n`` exchanges.

    ``followups`` are about the first answer, so they come first (in random order); ``switches``
    move on to a related question; generic follow-ups fill whatever is left.
    """
    followups, switches = list(followups), list(switches)
    rng.shuffle(followups)
    rng.shuffle(switches)
    turns.extend((followups + switches)[: max(0, n - len(turns))])
    while len(turns) < n:
        turns.append(generic_followup(rng, turns))
    return turns[:n]


# ---------------------------------------------------------------------------------------------
# Cooking

# (quantity or None, unit, ingredient); quantities are for "serves" people.
DISHES = [
    {
        "name": "tomato soup",
        "serves": 4,
        "minutes": 35,
        "ingredients": [
            (2, "tbsp", "olive oil"),
            (1, "", "large onion, chopped"),
            (3, "clove", "garlic, sliced"),
            (800, "g", "canned whole tomatoes"),
            (500, "ml", "vegetable stock"),
            (1, "tsp", "sugar"),
            (4, "tbsp", "cream (optional)"),
            (None, "", "salt and black pepper to taste"),
        ],
        "steps": [
            "Warm the olive oil in a large pot over medium heat and soften the onion for about eight minutes, stirring now and then.",
            "Add the garlic and cook for one more minute, until it smells sweet but has not browned.",
            "Tip in the tomatoes with their juice, the stock and the sugar, then simmer gently for twenty minutes.",
            "Blend until smooth, season with salt and pepper, and stir in the cream just before serving.",
        ],
        "vegan": "Swap the cream for oat or soy cream, or leave it out and finish each bowl with a drizzle of good olive oil.",
        "keeps": "It keeps for four days in a covered container in the fridge.",
        "freeze": "It freezes very well for up to three months. Add the cream after reheating rather than before freezing.",
        "serve": "Grilled cheese sandwiches, crusty bread or a handful of garlic croutons.",
    },
    {
        "name": "lemon garlic pasta",
        "serves": 2,
        "minutes": 20,
        "ingredients": [
            (200, "g", "spaghetti"),
            (3, "tbsp", "olive oil"),
            (4, "clove", "garlic, thinly sliced"),
            (1, "", "lemon, zest and juice"),
            (40, "g", "grated parmesan"),
            (1, "handful", "parsley, chopped"),
            (None, "", "chilli flakes, salt and pepper"),
        ],
        "steps": [
            "Cook the spaghetti in well-salted boiling water until just al dente, and keep a mug of the cooking water.",
            "Meanwhile, warm the oil in a wide pan over low heat and gently cook the garlic and a pinch of chilli until pale gold.",
            "Add the drained pasta, the lemon zest and juice, and a splash of the pasta water, then toss hard so the sauce turns glossy.",
            "Take the pan off the heat, stir in the parmesan and parsley, and loosen with more pasta water if it looks dry.",
        ],
        "vegan": "Leave out the parmesan and add two tablespoons of nutritional yeast and a few toasted breadcrumbs for crunch.",
        "keeps": "It is best eaten straight away, but leftovers keep for two days in the fridge.",
        "freeze": "I wouldn't freeze it: the pasta goes soft and the sauce separates when it thaws.",
        "serve": "A simple green salad or some roasted cherry tomatoes.",
    },
    {
        "name": "vegetable fried rice",
        "serves": 3,
        "minutes": 20,
        "ingredients": [
            (450, "g", "cooked rice, preferably a day old"),
            (2, "tbsp", "neutral oil"),
            (2, "", "egg, beaten"),
            (150, "g", "frozen peas and carrots"),
            (3, "", "spring onion, sliced"),
            (2, "tbsp", "soy sauce"),
            (1, "tsp", "sesame oil"),
        ],
        "steps": [
            "Heat half the oil in a wok or large frying pan until very hot, scramble the eggs quickly and set them aside.",
            "Add the rest of the oil, then the peas, carrots and the white part of the spring onions, and stir-fry for two minutes.",
            "Add the rice, breaking up any clumps, and fry for four to five minutes until the grains start to crisp.",
            "Stir through the soy sauce, sesame oil, eggs and the green part of the spring onions, and serve hot.",
        ],
        "vegan": "Skip the eggs and crumble in some firm tofu fried until golden instead.",
        "keeps": "Cool it quickly and eat it within a day; cooked rice should not sit at room temperature.",
        "freeze": "You can freeze it in flat bags for a month and fry it straight from frozen.",
        "serve": "A cucumber salad with rice vinegar, or some steamed greens with garlic.",
    },
    {
        "name": "banana bread",
        "serves": 8,
        "fixed": True,  # one loaf; don't scale
        "minutes": 70,
        "ingredients": [
            (3, "", "very ripe banana"),
            (75, "g", "melted butter"),
            (150, "g", "brown sugar"),
            (1, "", "egg"),
            (1, "tsp", "vanilla extract"),
            (1, "tsp", "baking soda"),
            (190, "g", "plain flour"),
            (1, "pinch", "salt"),
        ],
        "steps": [
            "Heat the oven to 175 °C and line a loaf tin with baking paper.",
            "Mash the bananas in a bowl, then stir in the melted butter, sugar, egg and vanilla.",
            "Sprinkle over the baking soda and salt, then fold in the flour until no dry streaks remain.",
            "Pour into the tin and bake for 55 to 60 minutes, until a skewer comes out clean. Cool before slicing.",
        ],
        "vegan": "Use 75 ml of neutral oil instead of butter and a flax egg (one tablespoon of ground flaxseed mixed with three tablespoons of water).",
        "keeps": "Wrapped well, it stays moist for three days at room temperature.",
        "freeze": "Slice it first, then freeze the slices; you can toast them straight from the freezer.",
        "serve": "A smear of butter, some peanut butter, or a spoon of yoghurt and berries.",
    },
    {
        "name": "overnight oats",
        "serves": 1,
        "minutes": 5,
        "ingredients": [
            (50, "g", "rolled oats"),
            (120, "ml", "milk or a plant milk"),
            (3, "tbsp", "yoghurt"),
            (1, "tsp", "chia seeds"),
            (1, "tsp", "honey or maple syrup"),
            (1, "handful", "berries"),
        ],
        "steps": [
            "Stir the oats, milk, yoghurt, chia seeds and honey together in a jar.",
            "Cover and leave in the fridge overnight, or for at least four hours.",
            "In the morning, stir again, loosen with a splash of milk if needed, and top with the berries.",
        ],
        "vegan": "Use a plant milk, a soy or coconut yoghurt, and maple syrup instead of honey.",
        "keeps": "You can make three or four jars at once; they keep for up to four days in the fridge.",
        "freeze": "Freezing works but the texture gets a little grainy, so I'd just make them fresh every few days.",
        "serve": "Some toasted nuts or a spoon of nut butter on top for extra protein.",
    },
    {
        "name": "red lentil curry",
        "serves": 4,
        "minutes": 40,
        "ingredients": [
            (1, "tbsp", "oil"),
            (1, "", "onion, diced"),
            (2, "clove", "garlic, grated"),
            (1, "thumb", "fresh ginger, grated"),
            (2, "tbsp", "curry paste"),
            (250, "g", "red lentils, rinsed"),
            (400, "ml", "coconut milk"),
            (600, "ml", "water or stock"),
            (100, "g", "baby spinach"),
        ],
        "steps": [
            "Soften the onion in the oil for five minutes, then add the garlic, ginger and curry paste and fry for one minute.",
            "Add the lentils, coconut milk and water, bring to a simmer and cook for about twenty minutes, stirring often so nothing sticks.",
            "When the lentils have collapsed into a thick sauce, stir in the spinach until it wilts.",
            "Taste, add salt and a squeeze of lime if you have one, and serve with rice or flatbread.",
        ],
        "vegan": "It already is vegan as long as your curry paste has no fish sauce or shrimp paste in it; check the label.",
        "keeps": "It keeps for five days in the fridge and tastes even better on the second day.",
        "freeze": "Yes, portion it into containers and freeze for up to three months.",
        "serve": "Basmati rice, warm flatbread, and a spoon of yoghurt or a quick tomato and onion salad.",
    },
    {
        "name": "fluffy pancakes",
        "serves": 4,
        "minutes": 25,
        "ingredients": [
            (200, "g", "plain flour"),
            (2, "tsp", "baking powder"),
            (1, "tbsp", "sugar"),
            (1, "pinch", "salt"),
            (2, "", "egg"),
            (250, "ml", "milk"),
            (30, "g", "melted butter, plus extra for the pan"),
        ],
        "steps": [
            "Whisk the flour, baking powder, sugar and salt in a large bowl.",
            "In a jug, beat the eggs with the milk and melted butter, then pour into the dry ingredients and mix until just combined; a few lumps are fine.",
            "Let the batter rest for five minutes while you heat a non-stick pan over medium heat.",
            "Cook ladlefuls of batter until bubbles appear on the surface, flip, and cook for another minute until golden.",
        ],
        "vegan": "Use a plant milk, oil instead of butter, and replace the eggs with a mashed banana plus an extra teaspoon of baking powder.",
        "keeps": "Cooked pancakes keep for two days in the fridge; reheat them in a toaster or a dry pan.",
        "freeze": "Freeze them with baking paper between each one, then reheat straight from frozen.",
        "serve": "Maple syrup, lemon and sugar, or yoghurt with fresh fruit.",
    },
    {
        "name": "guacamole",
        "serves": 4,
        "minutes": 10,
        "ingredients": [
            (3, "", "ripe avocado"),
            (1, "", "lime, juiced"),
            (0.5, "", "small red onion, finely chopped"),
            (1, "", "tomato, seeded and diced"),
            (1, "handful", "coriander, chopped"),
            (None, "", "salt and a little fresh chilli to taste"),
        ],
        "steps": [
            "Halve the avocados, remove the stones and scoop the flesh into a bowl.",
            "Mash with a fork, leaving it a little chunky, and stir in the lime juice straight away so it stays green.",
            "Fold in the onion, tomato, coriander and chilli, then season with salt.",
        ],
        "vegan": "Good news: guacamole is vegan as it is.",
        "keeps": "Press cling film directly onto the surface and it will keep for a day in the fridge.",
        "freeze": "You can freeze plain mashed avocado with lime, but add the onion and tomato after thawing.",
        "serve": "Tortilla chips, tacos, or on toast with a fried egg.",
    },
    {
        "name": "shakshuka",
        "serves": 2,
        "minutes": 30,
        "ingredients": [
            (2, "tbsp", "olive oil"),
            (1, "", "onion, sliced"),
            (1, "", "red pepper, sliced"),
            (2, "clove", "garlic"),
            (1, "tsp", "ground cumin"),
            (1, "tsp", "smoked paprika"),
            (400, "g", "chopped tomatoes"),
            (4, "", "egg"),
            (None, "", "feta and fresh herbs to finish"),
        ],
        "steps": [
            "Fry the onion and pepper in the oil over medium heat for ten minutes until soft and sweet.",
            "Add the garlic and spices, cook for a minute, then pour in the tomatoes and simmer for ten minutes until thick.",
            "Make four wells in the sauce, crack an egg into each, cover the pan and cook for six to eight minutes until the whites are set.",
            "Crumble over the feta, scatter the herbs and bring the pan straight to the table.",
        ],
        "vegan": "Replace the eggs with chickpeas or cubes of smoked tofu and skip the feta.",
        "keeps": "The sauce keeps for four days; cook the eggs in it fresh when you reheat.",
        "freeze": "Freeze only the tomato sauce, not the eggs.",
        "serve": "Plenty of crusty bread or warm pita for mopping up the sauce.",
    },
    {
        "name": "mushroom risotto",
        "serves": 4,
        "minutes": 45,
        "ingredients": [
            (1.2, "l", "hot vegetable stock"),
            (2, "tbsp", "olive oil"),
            (30, "g", "butter"),
            (1, "", "onion, finely chopped"),
            (300, "g", "mushrooms, sliced"),
            (300, "g", "risotto rice"),
            (125, "ml", "dry white wine"),
            (50, "g", "grated parmesan"),
        ],
        "steps": [
            "Keep the stock hot in a small pan. In a wide pan, fry the mushrooms in the oil over high heat until browned, then set them aside.",
            "Melt the butter in the same pan and soften the onion for five minutes, then add the rice and stir for two minutes until the grains look glassy.",
            "Pour in the wine and let it bubble away, then add the stock one ladle at a time, stirring and waiting until each is absorbed before adding the next.",
            "After about eighteen minutes, when the rice is creamy but still has a little bite, stir in the mushrooms and parmesan, cover, and rest for two minutes.",
        ],
        "vegan": "Use olive oil instead of butter, skip the parmesan, and stir in a spoon of white miso at the end for depth.",
        "keeps": "It keeps for two days, though it thickens; leftovers make great fried risotto cakes.",
        "freeze": "Risotto does not freeze well; the rice turns grainy.",
        "serve": "A rocket salad with lemon dressing.",
    },
    {
        "name": "roasted chickpeas",
        "serves": 4,
        "minutes": 40,
        "ingredients": [
            (2, "can", "chickpeas, drained and dried"),
            (2, "tbsp", "olive oil"),
            (1, "tsp", "smoked paprika"),
            (0.5, "tsp", "garlic powder"),
            (0.5, "tsp", "salt"),
        ],
        "steps": [
            "Heat the oven to 200 °C. Pat the chickpeas very dry with a clean towel and rub off any loose skins.",
            "Toss them with the oil and spread them out on a baking tray in a single layer.",
            "Roast for 25 to 30 minutes, shaking the tray halfway, until deep golden and crunchy.",
            "Toss with the spices and salt while still hot, then let them cool on the tray so they stay crisp.",
        ],
        "vegan": "They are already vegan.",
        "keeps": "Store them in an open bowl rather than a sealed jar; they soften within a day if sealed.",
        "freeze": "I wouldn't; they lose their crunch.",
        "serve": "On their own as a snack, or scattered over salads and soups.",
    },
    {
        "name": "chicken and vegetable stir-fry",
        "serves": 2,
        "minutes": 25,
        "ingredients": [
            (300, "g", "chicken breast, thinly sliced"),
            (1, "tbsp", "cornflour"),
            (2, "tbsp", "neutral oil"),
            (1, "", "red pepper, sliced"),
            (1, "head", "broccoli, in small florets"),
            (2, "clove", "garlic"),
            (3, "tbsp", "soy sauce"),
            (1, "tbsp", "honey"),
            (1, "tbsp", "rice vinegar"),
        ],
        "steps": [
            "Toss the chicken with the cornflour and a pinch of salt. Mix the soy sauce, honey and vinegar in a cup.",
            "Heat the oil in a wok until smoking and fry the chicken in one layer for three to four minutes, until cooked through, then take it out.",
            "Stir-fry the broccoli and pepper for three minutes with a splash of water, adding the garlic for the last thirty seconds.",
            "Return the chicken, pour in the sauce and toss until everything is glossy. Serve over rice or noodles.",
        ],
        "vegan": "Use extra-firm tofu instead of chicken and maple syrup instead of honey.",
        "keeps": "It keeps for three days in the fridge.",
        "freeze": "You can freeze it, but the vegetables lose their crunch.",
        "serve": "Steamed jasmine rice or egg noodles.",
    },
]

COOKING_PROBLEMS = [
    (
        "my rice always turns out mushy",
        "Mushy rice usually means too much water or too much stirring. Rinse the rice until the water runs almost clear to wash off surface starch, use about 1.5 parts water to 1 part long-grain rice, and keep the lid on while it simmers on the lowest heat. When the time is up, leave it covered off the heat for ten minutes, then fluff it with a fork instead of a spoon.",
    ),
    (
        "my bread doesn't rise",
        "The usual suspects are tired yeast, water that was too hot, or a kitchen that is too cold. Check the date on the yeast, use water that feels just warm on your wrist (around 38 °C), and let the dough rise somewhere draughty-free, like an oven with only the light on. Also give it time: in a cool room the first rise can take two hours instead of one.",
    ),
    (
        "my cookies spread too much in the oven",
        "Cookies spread when the butter is too warm or there is too little flour. Chill the dough for at least thirty minutes before baking, measure the flour by weight if you can, and bake on a cool tray rather than one that just came out of the oven. Baking paper also helps more than a greased tray.",
    ),
    (
        "my sauce split",
        "A split sauce means the fat has separated from the liquid, usually because it got too hot or the fat was added too fast. Take it off the heat and whisk in a spoonful of cold water or cream; for a butter sauce, whisk it into a fresh spoon of warm water a little at a time. Next time, keep the heat low and add the fat gradually.",
    ),
    (
        "my pancakes come out flat and rubbery",
        "Rubbery pancakes come from over-mixing, which develops gluten, and flat ones from old baking powder. Stir the batter only until the flour disappears, leave the lumps, and let it rest for a few minutes. Check that your baking powder still fizzes when you drop a pinch into hot water.",
    ),
    (
        "my roast vegetables turn out soggy",
        "Soggy vegetables are steamed rather than roasted, usually because the tray is crowded. Spread them out in one layer with space between the pieces, use two trays if you need to, dry them well after washing, and roast at a high heat, around 220 °C. Turning them once halfway also helps them brown evenly.",
    ),
    (
        "my scrambled eggs are dry",
        "Dry scrambled eggs are overcooked. Cook them over low heat, stir gently and constantly, and take the pan off the heat while they still look slightly wet, because they keep cooking on the plate. A small knob of butter or a spoon of milk stirred in at the end keeps them soft.",
    ),
    (
        "the garlic in my dishes tastes bitter",
        "Garlic turns bitter when it burns, and because it is small it burns fast. Add it after the onions have softened rather than at the start, keep the heat at medium, and cook it for no more than a minute before adding something wet like tomatoes or stock.",
    ),
]

COOKING_SYSTEM = (
    "You are a friendly home-cooking assistant. Give practical, step-by-step answers with metric measurements.",
    "You help people cook simple, healthy meals at home. Keep answers short and concrete.",
)


def fmt_qty(qty: float | None, unit: str, name: str) -> str:
    if qty is None:
        return name
    if unit in ("g", "ml"):
        step = 5 if qty < 100 else 10
        qty = max(step, round(qty / step) * step)
        return f"{int(qty)} {unit} {name}"
    if unit == "l":
        return f"{num(qty, 2)} l {name}"
    if not unit:
        # Whole things (eggs, onions): halves only below one, otherwise whole numbers.
        qty = max(0.5, round(qty * 2) / 2) if qty < 1 else max(1, math.floor(qty + 0.5))
        text = "½" if qty == 0.5 else str(int(qty))
        if qty > 1:
            noun, sep, rest = name.partition(",")
            noun += "es" if noun.endswith("tomato") else "s"
            name = noun + sep + rest
        return f"{text} {name}"
    # Spoons, pinches, cans: to the nearest half.
    qty = max(0.5, round(qty * 2) / 2)
    whole = int(qty)
    text = str(whole) if qty == whole else ("½" if whole == 0 else f"{whole}½")
    plural = qty > 1 and unit not in ("tbsp", "tsp")
    suffix = ("es" if unit.endswith(("ch", "sh")) else "s") if plural else ""
    return f"{text} {unit}{suffix} {name}"


def recipe_text(dish: dict, people: int) -> str:
    factor = people / dish["serves"]
    ingredients = [fmt_qty(q * factor if q is not None else None, u, n) for q, u, n in dish["ingredients"]]
    return (
        f"**Ingredients** (serves {people}):\n{bullets(ingredients)}\n\n"
        f"**Method** (about {dish['minutes']} minutes):\n{numbered(dish['steps'])}"
    )


def topic_cooking(rng: random.Random, n: int) -> list[Turn]:
    if rng.random() < 0.3:
        problem, answer = pick(rng, COOKING_PROBLEMS)
        ask = pick(rng, ("Help, {p}. What am I doing wrong?", "Any idea why {p}?", "{P}. How do I fix that?"))
        ask = ask.format(p=problem, P=problem[0].upper() + problem[1:])
        turns = [(ask, answer)]
        others = [p for p in COOKING_PROBLEMS if p[0] != problem]
        switches = [(f"While we're at it: {other}. Any idea why?", other_answer) for other, other_answer in rng.sample(others, 3)]
        return fill(rng, turns, [], n, switches)

    dish = pick(rng, DISHES)
    people = pick(rng, (1, 2, 2, 3, 4, 4, 6, 8))
    name = dish["name"]
    first = [ing[2].split(",")[0] for ing in dish["ingredients"] if ing[0] is not None]
    ask = pick(
        rng,
        (
            f"Can you give me a recipe for {name}?",
            f"How do I make {name} for {people} people?",
            f"I have {join_list(first[:3])}. Could I make {name} with that? Please give me a recipe.",
            f"What's a simple way to make {name}?",
            f"recipe for {name} pls, for {people}",
        ),
    )
    if str(people) not in ask or dish.get("fixed"):
        people = dish["serves"]
    intro = pick(
        rng,
        (
            f"Here is a simple {name} that serves {people}.",
            f"Sure! This recipe for {name} takes about {dish['minutes']} minutes.",
            f"Of course. This is an easy, reliable version of {name}.",
        ),
    )
    turns = [(ask, f"{intro}\n\n{recipe_text(dish, people)}")]
    followups = [
        ("Can I make it vegan?", dish["vegan"]),
        ("How long does it keep in the fridge?", dish["keeps"]),
        ("Can I freeze it?", dish["freeze"]),
        ("What would you serve with it?", f"{dish['serve']}"),
    ]
    more = pick(rng, (2, 3, 6, 10, 12))
    if more != people and not dish.get("fixed"):
        followups.append(
            (
                f"What if I need to cook for {more} people instead?",
                f"Just scale everything. For {more} people you need:\n\n"
                + bullets(
                    fmt_qty(q * more / dish["serves"] if q is not None else None, u, n_)
                    for q, u, n_ in dish["ingredients"]
                )
                + (
                    "\n\nThe method stays the same, though a bigger batch may need a few extra minutes and a larger pan."
                    if more > dish["serves"]
                    else "\n\nThe method stays the same; a smaller batch may cook a little faster, so keep an eye on it."
                ),
            )
        )
    return fill(rng, turns, followups, n)


# ---------------------------------------------------------------------------------------------
# Travel

CITIES = [
    {
        "name": "Paris",
        "sights": ["the Louvre", "the Eiffel Tower", "Montmartre and the Sacré-Cœur", "the Musée d'Orsay", "the Île de la Cité"],
        "transport": "The Métro is fast and covers the whole city; buy a reloadable Navigo Easy card and top it up with tickets. Many central sights are also within walking distance of each other.",
        "thanks": "merci",
        "language": "French",
        "food": "a croissant from a neighbourhood bakery, a croque-monsieur at a café, and a simple steak-frites",
        "dinner": "a classic bistro dinner",
    },
    {
        "name": "Rome",
        "sights": ["the Colosseum and the Roman Forum", "the Pantheon", "the Vatican Museums", "the Trastevere neighbourhood", "the Trevi Fountain"],
        "transport": "The historic centre is best on foot. The metro has only a few lines, so buses and trams fill the gaps; validate your ticket when you board.",
        "thanks": "grazie",
        "language": "Italian",
        "food": "cacio e pepe, supplì from a takeaway counter, and a gelato in the late afternoon",
        "dinner": "cacio e pepe at a trattoria",
    },
    {
        "name": "Kyoto",
        "sights": ["the Fushimi Inari shrine with its thousands of torii gates", "the Arashiyama bamboo grove", "the Gion district", "Kinkaku-ji, the Golden Pavilion", "the Philosopher's Path"],
        "transport": "City buses reach most temples, and trains are quicker for Arashiyama and Fushimi Inari. An IC card such as ICOCA works on both, so you don't need to buy separate tickets.",
        "thanks": "arigatō (ありがとう)",
        "language": "Japanese",
        "food": "a bowl of ramen, tofu dishes near the temples, and snacks from Nishiki Market",
        "dinner": "a bowl of ramen or a tofu set meal",
    },
    {
        "name": "Lisbon",
        "sights": ["the Alfama quarter", "the Belém Tower and the Jerónimos Monastery", "the Castelo de São Jorge", "the Bairro Alto", "the LX Factory"],
        "transport": "Use the metro for longer distances and the old trams and funiculars for the hills. A rechargeable Viva Viagem card works on all of them. Wear shoes with grip: the stone pavements get slippery.",
        "thanks": "obrigado (if you are a man) or obrigada (if you are a woman)",
        "language": "Portuguese",
        "food": "pastéis de nata, grilled sardines in summer, and a bifana sandwich",
        "dinner": "grilled fish at a small tasca",
    },
    {
        "name": "Barcelona",
        "sights": ["the Sagrada Família", "Park Güell", "the Gothic Quarter", "the Boqueria market", "the beach at Barceloneta"],
        "transport": "The metro is excellent and a multi-trip T-casual ticket saves money. For the Sagrada Família and Park Güell, book timed tickets online in advance.",
        "thanks": "gràcies in Catalan, or gracias in Spanish",
        "language": "Catalan and Spanish",
        "food": "pa amb tomàquet, patatas bravas, and a seafood paella for lunch",
        "dinner": "tapas in the El Born neighbourhood",
    },
    {
        "name": "Istanbul",
        "sights": ["the Hagia Sophia", "the Blue Mosque", "the Grand Bazaar", "the Bosphorus waterfront", "the Galata Tower area"],
        "transport": "Get an Istanbulkart: it works on the trams, metro, buses and the ferries, and crossing between Europe and Asia by ferry is one of the best ways to see the city.",
        "thanks": "teşekkür ederim",
        "language": "Turkish",
        "food": "a simit for breakfast, a fish sandwich by the water, and baklava with a tea",
        "dinner": "meze and grilled fish by the water",
    },
    {
        "name": "New York",
        "sights": ["Central Park", "the Metropolitan Museum of Art", "the Brooklyn Bridge", "the High Line", "the Museum of Modern Art"],
        "transport": "The subway runs day and night; you can pay by tapping a contactless card at the turnstile. Walking is the best way to get a feel for each neighbourhood.",
        "thanks": "thank you — it's English, though you'll hear dozens of other languages too",
        "language": "English",
        "food": "a bagel, a slice of pizza, and dumplings in Chinatown",
        "dinner": "dumplings in Chinatown",
    },
    {
        "name": "Mexico City",
        "sights": ["the Zócalo and the historic centre", "Chapultepec Park and the National Museum of Anthropology", "the Frida Kahlo Museum in Coyoacán", "the canals of Xochimilco", "the Roma and Condesa neighbourhoods"],
        "transport": "The metro is cheap and extensive but very busy at rush hour. Ride-hailing apps are convenient in the evening.",
        "thanks": "gracias",
        "language": "Spanish",
        "food": "tacos al pastor, tamales for breakfast, and churros with hot chocolate",
        "dinner": "tacos al pastor from a busy stand",
    },
    {
        "name": "Edinburgh",
        "sights": ["Edinburgh Castle", "the Royal Mile", "Arthur's Seat", "the National Museum of Scotland", "the Georgian streets of the New Town"],
        "transport": "The centre is compact and hilly, so walking is easiest. Buses and the tram cover the rest, including the airport.",
        "thanks": "thank you, or a friendly cheers",
        "language": "English (with a lot of Scots words you may hear)",
        "food": "a full Scottish breakfast, fish and chips, and cranachan for dessert",
        "dinner": "fish and chips or a cosy pub dinner",
    },
    {
        "name": "Prague",
        "sights": ["the Charles Bridge", "Old Town Square and the astronomical clock", "Prague Castle", "Letná Park", "the Vyšehrad fortress"],
        "transport": "Trams are the easiest way around and run frequently. Buy a time-based ticket and validate it when you first board.",
        "thanks": "děkuji",
        "language": "Czech",
        "food": "svíčková with dumplings, trdelník from a street stall, and a hearty goulash",
        "dinner": "svíčková with dumplings",
    },
    {
        "name": "Seoul",
        "sights": ["Gyeongbokgung Palace", "Bukchon Hanok Village", "N Seoul Tower on Namsan", "Gwangjang Market", "the Cheonggyecheon stream"],
        "transport": "The subway is clean, cheap and signed in English. A T-money card works on subways, buses and even in convenience stores.",
        "thanks": "gamsahamnida (감사합니다)",
        "language": "Korean",
        "food": "bibimbap, Korean fried chicken, and bindaetteok at Gwangjang Market",
        "dinner": "Korean fried chicken",
    },
]

MORNINGS = (
    "start early at {sight}, before the crowds arrive",
    "spend a few unhurried hours at {sight}",
    "begin with {sight}",
    "head to {sight} after breakfast",
)
AFTERNOONS = (
    "wander the nearby streets and stop wherever looks interesting",
    "have a long lunch and then visit {sight}",
    "take it slow with a coffee and then explore {sight}",
    "join a walking tour to learn the history of the neighbourhood",
    "rest at your hotel for an hour, then go out to {sight}",
)
EVENINGS = (
    "have dinner somewhere local; ask your hotel for a place they like themselves",
    "find a viewpoint for sunset, then try {food}",
    "treat yourself to {food}",
    "keep it low-key with a picnic of market food",
)

TRIP_PACKING = {
    "a beach holiday": ["swimwear and a cover-up", "a wide-brimmed hat and sunglasses", "reef-safe sunscreen", "sandals and one pair of walking shoes", "a light long-sleeved shirt for the evenings", "a reusable water bottle"],
    "a hiking trip": ["broken-in hiking boots", "moisture-wicking socks, two pairs per day if it is wet", "a waterproof jacket", "a warm mid-layer such as fleece", "a small first-aid kit with blister plasters", "a head torch", "snacks and a water filter or enough water"],
    "a business trip": ["one suit or smart outfit that mixes and matches", "a laptop charger and a plug adapter", "comfortable smart shoes", "a few shirts that don't crease easily", "printed copies of important documents", "a small notebook"],
    "a winter city break": ["a warm coat and a hat", "thermal base layers", "waterproof boots with good grip", "gloves and a scarf", "lip balm and hand cream", "a small umbrella"],
}

TRAVEL_TIPS = [
    "Make copies of your passport and bookings and keep them separate from the originals.",
    "Tell your bank you're travelling so your card isn't blocked.",
    "Download offline maps of the city before you leave.",
    "Pack one outfit and your essentials in your hand luggage in case your suitcase is delayed.",
    "Check the plug type and bring an adapter.",
    "Carry a small amount of local cash for markets and small cafés.",
    "Check whether you need a visa or an electronic travel authorisation well in advance.",
    "Buy travel insurance that covers medical costs and cancellations.",
]

JET_LAG = (
    "To beat jet lag, start shifting your sleep by an hour a day for a few days before you fly, drink plenty of water on the plane, and "
    "get outside in daylight as soon as you arrive, since light is the strongest signal for your body clock. Try to stay awake until "
    "a normal local bedtime, even if you nap for twenty minutes in the afternoon. Most people adjust at roughly one day per time zone."
)

TRAVEL_SYSTEM = (
    "You are a travel planning assistant. Suggest realistic plans and mention when things should be booked in advance.",
    "You are a helpful assistant for travellers. Be concise and practical.",
)


def itinerary(rng: random.Random, city: dict, days: int) -> str:
    sights = list(city["sights"])
    rng.shuffle(sights)
    lines = []
    for day in range(1, days + 1):
        s1 = sights[(2 * day - 2) % len(sights)]
        s2 = sights[(2 * day - 1) % len(sights)]
        morning = pick(rng, MORNINGS).format(sight=s1)
        afternoon = pick(rng, AFTERNOONS).format(sight=s2)
        evening = pick(rng, EVENINGS).format(food=city["dinner"])
        lines.append(f"**Day {day}:** In the morning, {morning}. In the afternoon, {afternoon}. In the evening, {evening}.")
    return "\n\n".join(lines)


def topic_travel(rng: random.Random, n: int) -> list[Turn]:
    kind = rng.random()
    if kind < 0.2:
        trip = pick(rng, list(TRIP_PACKING))
        items = TRIP_PACKING[trip]
        ask = pick(rng, (f"What should I pack for {trip}?", f"Packing list for {trip}?", f"I'm going on {trip} next week. What do I need to bring?"))
        turns = [(ask, f"Here's a compact list for {trip}:\n\n{bullets(items)}\n\nRoll your clothes instead of folding them; it saves space and reduces creases.")]
        tips = rng.sample(TRAVEL_TIPS, 4)
        followups = [
            ("Any general tips before I go?", bullets(tips)),
            ("How do I deal with jet lag?", JET_LAG),
            ("Can I fit all of that in a carry-on?", "Usually, yes, if you pick clothes in two or three colours that all go together, wear your bulkiest shoes and jacket on the plane, and decant liquids into small travel bottles. Check your airline's size and weight limits, because they differ a lot."),
        ]
        return fill(rng, turns, followups, n)
    city = pick(rng, CITIES)
    days = rng.randint(2, 5)
    ask = pick(
        rng,
        (
            f"I'm spending {days} days in {city['name']}. Can you suggest an itinerary?",
            f"Plan a {days}-day trip to {city['name']} for me, please.",
            f"First time in {city['name']}, {days} days. What should I not miss?",
        ),
    )
    intro = pick(rng, (f"{city['name']} is a great choice! Here's a relaxed plan:", f"Here's a {days}-day plan that mixes the big sights with some slower time:"))
    turns = [(ask, f"{intro}\n\n{itinerary(rng, city, days)}")]
    followups = [
        ("What's the best way to get around?", city["transport"]),
        (f"How do I say thank you in {city['language'].split(' ')[0]}?", f"In {city['name']} you can say {city['thanks']}. People really appreciate it when visitors make the effort."),
        ("What food should I try?", f"Definitely try {city['food']}."),
        ("Any general travel tips?", bullets(rng.sample(TRAVEL_TIPS, 3))),
        ("I'm flying in from the other side of the world. Any advice for jet lag?", JET_LAG),
    ]
    return fill(rng, turns, followups, n)


# ---------------------------------------------------------------------------------------------
# Languages

PHRASES = {
    "good morning": {"Spanish": "buenos días", "French": "bonjour", "German": "Guten Morgen", "Italian": "buongiorno", "Portuguese": "bom dia", "Japanese": "おはようございます (ohayō gozaimasu)", "Korean": "좋은 아침이에요 (joeun achimieyo)", "Russian": "доброе утро (dobroye utro)"},
    "thank you": {"Spanish": "gracias", "French": "merci", "German": "danke", "Italian": "grazie", "Portuguese": "obrigado / obrigada", "Japanese": "ありがとうございます (arigatō gozaimasu)", "Korean": "감사합니다 (gamsahamnida)", "Russian": "спасибо (spasibo)"},
    "where is the train station?": {"Spanish": "¿Dónde está la estación de tren?", "French": "Où est la gare ?", "German": "Wo ist der Bahnhof?", "Italian": "Dov'è la stazione?", "Portuguese": "Onde fica a estação de trem?", "Japanese": "駅はどこですか？ (eki wa doko desu ka?)", "Korean": "기차역이 어디에 있어요? (gichayeogi eodie isseoyo?)", "Russian": "Где вокзал? (gde vokzal?)"},
    "how much does this cost?": {"Spanish": "¿Cuánto cuesta esto?", "French": "Combien ça coûte ?", "German": "Wie viel kostet das?", "Italian": "Quanto costa?", "Portuguese": "Quanto custa isto?", "Japanese": "これはいくらですか？ (kore wa ikura desu ka?)", "Korean": "이거 얼마예요? (igeo eolmayeyo?)", "Russian": "Сколько это стоит? (skol'ko eto stoit?)"},
    "I would like a coffee, please": {"Spanish": "Quisiera un café, por favor.", "French": "Je voudrais un café, s'il vous plaît.", "German": "Ich hätte gern einen Kaffee, bitte.", "Italian": "Vorrei un caffè, per favore.", "Portuguese": "Eu queria um café, por favor.", "Japanese": "コーヒーをください。 (kōhī o kudasai.)", "Korean": "커피 한 잔 주세요. (keopi han jan juseyo.)", "Russian": "Кофе, пожалуйста. (kofe, pozhaluysta.)"},
}

LANGUAGE_TIPS = [
    "Practise a little every day; fifteen minutes daily beats two hours once a week.",
    "Learn the most common few hundred words first; they cover a large share of everyday speech.",
    "Listen to podcasts or shows for learners and repeat sentences out loud (shadowing).",
    "Use spaced-repetition flashcards for vocabulary.",
    "Find a conversation partner early, even if you only know a few phrases.",
    "Don't worry about mistakes: being understood matters more than being perfect at the start.",
]


def topic_language(rng: random.Random, n: int) -> list[Turn]:
    phrases = list(PHRASES)
    phrase = pick(rng, phrases)
    language = pick(rng, list(PHRASES[phrase]))
    ask = pick(rng, (f"How do I say \"{phrase}\" in {language}?", f"What's \"{phrase}\" in {language}?", f"Translate to {language}: {phrase}"))
    turns = [(ask, f"In {language}: **{PHRASES[phrase][language]}**")]
    followups = []
    for other in rng.sample([p for p in phrases if p != phrase], 3):
        followups.append((f"And \"{other}\"?", f"That would be **{PHRASES[other][language]}**"))
    followups.append((f"Any tips for learning {language}?", bullets(rng.sample(LANGUAGE_TIPS, 4))))
    others = [lang for lang in PHRASES[phrase] if lang != language]
    other_lang = pick(rng, others)
    switches = [(f"How would I say \"{phrase}\" in {other_lang}?", f"In {other_lang} it's **{PHRASES[phrase][other_lang]}**")]
    return fill(rng, turns, followups, n, switches)


# ---------------------------------------------------------------------------------------------
# Programming

# (questions, answer, follow-up or None)
CODE_QA = [
    (
        ("How do I reverse a list in Python?", "What's the best way to reverse a list in python"),
        dedent('''
            There are two common ways, depending on whether you want a new list or to change the original:

            ```python
            numbers = [1, 2, 3, 4]

            # A new, reversed copy; the original is unchanged.
            backwards = numbers[::-1]

            # Reverse in place; returns None.
            numbers.reverse()
            ```

            If you only need to loop backwards, `for n in reversed(numbers):` avoids making a copy at all.
        '''),
        ("Which one is faster?", "For a one-off reversal they are all fast. `list.reverse()` is the cheapest because it doesn't allocate a new list, `reversed()` is lazy and costs nothing until you iterate, and slicing makes a full copy. Pick whichever says what you mean."),
    ),
    (
        ("How can I read a text file line by line in Python?", "python read file lines without loading everything into memory?"),
        dedent('''
            Iterate over the file object; Python reads it lazily, one line at a time:

            ```python
            from pathlib import Path

            path = Path("notes.txt")
            with path.open(encoding="utf-8") as handle:
                for line_number, line in enumerate(handle, start=1):
                    print(line_number, line.rstrip("\\n"))
            ```

            The `with` block closes the file even if an error happens inside the loop.
        '''),
        ("Why do you pass encoding explicitly?", "Because the default encoding depends on the operating system and locale. On some Windows setups it isn't UTF-8, so the same script can read the file differently on another machine. Being explicit makes the behaviour the same everywhere."),
    ),
    (
        ("How do I sort a dictionary by its values?", "sort dict by value python"),
        dedent('''
            Dictionaries keep insertion order, so you can build a new one from the sorted items:

            ```python
            scores = {"ana": 82, "ben": 95, "chloe": 78}

            by_score = dict(sorted(scores.items(), key=lambda item: item[1], reverse=True))
            print(by_score)  # {'ben': 95, 'ana': 82, 'chloe': 78}
            ```

            If you only want the top few, `heapq.nlargest(2, scores.items(), key=lambda item: item[1])` avoids sorting everything.
        '''),
        None,
    ),
    (
        ("What does `if __name__ == \"__main__\":` do?", "Why do python scripts have if __name__ == '__main__' at the bottom?"),
        dedent('''
            Every module has a `__name__`. When you run a file directly, Python sets it to `"__main__"`; when the file is imported, it is set to the module's name instead. So the block only runs when the file is executed as a script:

            ```python
            def main() -> None:
                print("running as a script")

            if __name__ == "__main__":
                main()
            ```

            That lets the same file be both a reusable module and a command-line tool, and it is required when you use `multiprocessing` on platforms that start new processes by importing your script.
        '''),
        None,
    ),
    (
        ("What's the difference between a list and a tuple in Python?", "list vs tuple?"),
        dedent('''
            - A **list** is mutable: you can append, remove and change items. Use it for collections that grow or change.
            - A **tuple** is immutable: once created, it can't be changed. Use it for fixed groups of values, like a coordinate `(x, y)` or a row from a database.

            Because tuples are immutable (and their items hashable), they can be used as dictionary keys, while lists can't.
        '''),
        ("So should I always use tuples when I can?", "Not always. Use the one that matches the meaning: a tuple says \"this is a record with a fixed shape\", a list says \"this is a sequence of similar things\". The speed difference is tiny and rarely matters."),
    ),
    (
        ("How do I create a virtual environment?", "how to make a python venv"),
        dedent('''
            With the standard library's `venv` module:

            ```bash
            python -m venv .venv
            source .venv/bin/activate      # on Windows: .venv\\Scripts\\activate
            python -m pip install --upgrade pip
            pip install requests
            ```

            Run `deactivate` to leave it. Add `.venv/` to your `.gitignore` so you don't commit it.
        '''),
        ("How do I save the list of packages I installed?", "Run `pip freeze > requirements.txt`, and install them elsewhere with `pip install -r requirements.txt`. For a library you publish, list the dependencies in `pyproject.toml` instead."),
    ),
    (
        ("How do I handle an exception in Python but still see what went wrong?", "try except best practice python"),
        dedent('''
            Catch the specific exception you expect, and log it with its traceback:

            ```python
            import logging

            logger = logging.getLogger(__name__)

            def load_config(path: str) -> dict:
                try:
                    with open(path, encoding="utf-8") as handle:
                        return parse(handle.read())
                except FileNotFoundError:
                    logger.warning("no config at %s, using defaults", path)
                    return {}
                except ValueError:
                    logger.exception("config at %s is invalid", path)
                    raise
            ```

            Avoid a bare `except:`: it also catches `KeyboardInterrupt` and hides bugs.
        '''),
        None,
    ),
    (
        ("How do I remove duplicates from a list but keep the order?", "dedupe list keep order python"),
        dedent('''
            Use a dict, since dict keys are unique and keep insertion order:

            ```python
            items = ["b", "a", "b", "c", "a"]
            unique = list(dict.fromkeys(items))
            print(unique)  # ['b', 'a', 'c']
            ```

            `list(set(items))` also removes duplicates, but it does not keep the order.
        '''),
        None,
    ),
    (
        ("How do I count how often each word appears in a text?", "word frequency python"),
        dedent('''
            `collections.Counter` does exactly that:

            ```python
            import re
            from collections import Counter

            text = "the cat sat on the mat and the dog sat too"
            words = re.findall(r"[a-z']+", text.lower())
            counts = Counter(words)
            print(counts.most_common(3))  # [('the', 3), ('sat', 2), ('cat', 1)]
            ```
        '''),
        ("How would I ignore words like 'the' and 'and'?", "Keep a set of stop words and filter them out before counting: `counts = Counter(w for w in words if w not in STOP_WORDS)`, with `STOP_WORDS = {\"the\", \"and\", \"on\", \"a\"}`. A set makes each membership check fast."),
    ),
    (
        ("How do I filter and transform an array in JavaScript?", "js map filter example"),
        dedent('''
            Chain `filter` and `map`; both return new arrays and leave the original alone:

            ```javascript
            const orders = [
              { id: 1, total: 40, paid: true },
              { id: 2, total: 15, paid: false },
              { id: 3, total: 99, paid: true },
            ];

            const paidTotals = orders
              .filter((order) => order.paid)
              .map((order) => order.total);

            console.log(paidTotals); // [40, 99]
            ```

            To add them up, finish with `.reduce((sum, total) => sum + total, 0)`.
        '''),
        None,
    ),
    (
        ("How do I fetch JSON from an API in JavaScript?", "fetch json javascript async await"),
        dedent('''
            With `fetch` and `async`/`await`:

            ```javascript
            async function loadUser(id) {
              const response = await fetch(`/api/users/${id}`);
              if (!response.ok) {
                throw new Error(`Request failed with status ${response.status}`);
              }
              return response.json();
            }

            loadUser(42)
              .then((user) => console.log(user.name))
              .catch((error) => console.error(error));
            ```

            Note that `fetch` only rejects on network errors, not on HTTP errors like 404, which is why the `response.ok` check is there.
        '''),
        None,
    ),
    (
        ("How do I count rows per group in SQL?", "sql group by count example"),
        dedent('''
            Use `GROUP BY` with `COUNT(*)`:

            ```sql
            SELECT country, COUNT(*) AS customers
            FROM customers
            GROUP BY country
            HAVING COUNT(*) >= 10
            ORDER BY customers DESC;
            ```

            `WHERE` filters rows before grouping, and `HAVING` filters the groups afterwards.
        '''),
        ("And how do I join it with another table?", dedent('''
            Join first, then group. For example, the number of orders per customer, including customers with none:

            ```sql
            SELECT c.name, COUNT(o.id) AS orders
            FROM customers AS c
            LEFT JOIN orders AS o ON o.customer_id = c.id
            GROUP BY c.name;
            ```

            `COUNT(o.id)` counts only matching orders, so customers without orders get 0 instead of 1.
        ''')),
    ),
    (
        ("How do I undo my last git commit?", "git undo last commit but keep changes"),
        dedent('''
            If you haven't pushed it yet and want to keep the changes:

            ```bash
            git reset --soft HEAD~1
            ```

            Your changes stay staged, ready to commit again. Use `--mixed` (the default) to unstage them too. If the commit is already pushed and shared, use `git revert HEAD` instead, which adds a new commit that undoes it without rewriting history.
        '''),
        ("What does --hard do?", "`git reset --hard HEAD~1` moves the branch back **and** throws away the changes in your working tree. Only use it when you are sure you don't need them; if you do it by accident, `git reflog` can usually help you find the lost commit."),
    ),
    (
        ("How do I rename a git branch?", "rename branch git local and remote"),
        dedent('''
            ```bash
            git branch -m old-name new-name        # rename locally
            git push origin -u new-name            # push the new name and track it
            git push origin --delete old-name      # remove the old name on the remote
            ```

            If you are on the branch already, `git branch -m new-name` is enough for the first step.
        '''),
        None,
    ),
    (
        ("How can I find the biggest files in a folder from the terminal?", "linux find large files command"),
        dedent('''
            On Linux or macOS:

            ```bash
            du -ah . | sort -rh | head -n 20
            ```

            `du -ah` lists the size of every file and folder in human-readable units, `sort -rh` sorts them largest first, and `head` keeps the top 20. To look only at files over 100 MB: `find . -type f -size +100M`.
        '''),
        None,
    ),
    (
        ("Can you show me a Python dataclass example?", "what are dataclasses"),
        dedent('''
            A dataclass writes `__init__`, `__repr__` and `__eq__` for you from the annotated fields:

            ```python
            from dataclasses import dataclass, field

            @dataclass(frozen=True)
            class Point:
                x: float
                y: float

                def distance_to(self, other: "Point") -> float:
                    return ((self.x - other.x) ** 2 + (self.y - other.y) ** 2) ** 0.5

            @dataclass
            class Route:
                name: str
                points: list[Point] = field(default_factory=list)

            a, b = Point(0, 0), Point(3, 4)
            print(a.distance_to(b))  # 5.0
            ```

            `frozen=True` makes instances immutable and hashable; `default_factory` avoids sharing one list between all instances.
        '''),
        None,
    ),
    (
        ("How do I write a simple test with pytest?", "pytest basic example"),
        dedent('''
            Put test functions whose names start with `test_` in a file whose name starts with `test_`, and use plain `assert`:

            ```python
            # test_slugify.py
            import pytest

            from mytool import slugify

            def test_lowercases_and_joins_words():
                assert slugify("Hello World") == "hello-world"

            @pytest.mark.parametrize("raw", ["", "   "])
            def test_rejects_blank_input(raw):
                with pytest.raises(ValueError):
                    slugify(raw)
            ```

            Run `pytest -q` in the project folder. When an assert fails, pytest shows the values on both sides.
        '''),
        None,
    ),
    (
        ("How do I parse a date string in Python?", "python string to datetime"),
        dedent('''
            For ISO 8601 strings, use `fromisoformat`; for anything else, `strptime` with a format:

            ```python
            from datetime import datetime

            a = datetime.fromisoformat("2024-03-15T14:30:00")
            b = datetime.strptime("15/03/2024 14:30", "%d/%m/%Y %H:%M")
            print(a == b)  # True
            print((a - datetime(2024, 1, 1)).days)  # 74
            ```
        '''),
        None,
    ),
    (
        ("How do I read and write JSON files in Python?", "json load dump python"),
        dedent('''
            ```python
            import json

            settings = {"theme": "dark", "font_size": 14, "recent": ["a.txt", "b.txt"]}

            with open("settings.json", "w", encoding="utf-8") as handle:
                json.dump(settings, handle, indent=2, ensure_ascii=False)

            with open("settings.json", encoding="utf-8") as handle:
                loaded = json.load(handle)

            assert loaded == settings
            ```

            `ensure_ascii=False` writes characters like é or 東 as they are instead of `\\u` escapes.
        '''),
        None,
    ),
    (
        ("What is a Python generator and when should I use one?", "generators vs lists python"),
        dedent('''
            A generator produces values one at a time, only when asked, instead of building the whole list in memory:

            ```python
            def read_records(path):
                with open(path, encoding="utf-8") as handle:
                    for line in handle:
                        if line.strip():
                            yield line.rstrip("\\n").split(",")

            total = sum(int(row[2]) for row in read_records("sales.csv"))
            ```

            Use one when the data is large or endless, or when you'll only loop over it once. Use a list when you need to index into it or loop over it several times.
        '''),
        None,
    ),
    (
        ("How do I make a simple command-line tool with arguments in Python?", "argparse example"),
        dedent('''
            `argparse` from the standard library handles parsing, defaults and `--help`:

            ```python
            import argparse

            def main() -> None:
                parser = argparse.ArgumentParser(description="Greet someone.")
                parser.add_argument("name")
                parser.add_argument("--times", type=int, default=1, help="how many greetings")
                parser.add_argument("--shout", action="store_true")
                args = parser.parse_args()

                greeting = f"Hello, {args.name}!"
                if args.shout:
                    greeting = greeting.upper()
                for _ in range(args.times):
                    print(greeting)

            if __name__ == "__main__":
                main()
            ```

            Try `python greet.py Ada --times 2 --shout`.
        '''),
        None,
    ),
    (
        ("What's the difference between `==` and `is` in Python?", "== vs is"),
        "`==` checks whether two objects have equal values; `is` checks whether they are the very same object in memory. Two separate lists `[1, 2]` are `==` but not `is`. Use `is` only for singletons such as `None` (`if value is None:`), and `==` for everything else.",
        None,
    ),
]

CODE_SYSTEM = (
    "You are a senior software engineer who gives short, correct answers with small code examples.",
    "You are a coding assistant. Prefer the standard library and explain trade-offs briefly.",
)

# Small functions the assistant writes on request: (request, code)
FUNCTIONS = [
    (
        "checks whether a string is a palindrome, ignoring case and spaces",
        '''
        def is_palindrome(text: str) -> bool:
            cleaned = "".join(ch.lower() for ch in text if ch.isalnum())
            return cleaned == cleaned[::-1]
        ''',
        'is_palindrome("Never odd or even")  # True',
    ),
    (
        "returns the n-th Fibonacci number",
        '''
        def fibonacci(n: int) -> int:
            if n < 0:
                raise ValueError("n must be non-negative")
            a, b = 0, 1
            for _ in range(n):
                a, b = b, a + b
            return a
        ''',
        "fibonacci(10)  # 55",
    ),
    (
        "splits a list into chunks of a given size",
        '''
        def chunks(items: list, size: int) -> list[list]:
            if size < 1:
                raise ValueError("size must be at least 1")
            return [items[i : i + size] for i in range(0, len(items), size)]
        ''',
        "chunks([1, 2, 3, 4, 5], 2)  # [[1, 2], [3, 4], [5]]",
    ),
    (
        "converts a temperature from Celsius to Fahrenheit",
        '''
        def celsius_to_fahrenheit(celsius: float) -> float:
            return celsius * 9 / 5 + 32
        ''',
        "celsius_to_fahrenheit(100)  # 212.0",
    ),
    (
        "counts the vowels in a string",
        '''
        def count_vowels(text: str) -> int:
            return sum(1 for ch in text.lower() if ch in "aeiou")
        ''',
        'count_vowels("Programming")  # 3',
    ),
    (
        "flattens a nested list of any depth",
        '''
        def flatten(items):
            for item in items:
                if isinstance(item, list):
                    yield from flatten(item)
                else:
                    yield item
        ''',
        "list(flatten([1, [2, [3, 4]], 5]))  # [1, 2, 3, 4, 5]",
    ),
    (
        "checks whether a number is prime",
        '''
        def is_prime(n: int) -> bool:
            if n < 2:
                return False
            if n % 2 == 0:
                return n == 2
            divisor = 3
            while divisor * divisor <= n:
                if n % divisor == 0:
                    return False
                divisor += 2
            return True
        ''',
        "[n for n in range(20) if is_prime(n)]  # [2, 3, 5, 7, 11, 13, 17, 19]",
    ),
    (
        "turns a title into a URL slug",
        '''
        import re

        def slugify(title: str) -> str:
            slug = re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-")
            if not slug:
                raise ValueError("title has no letters or digits")
            return slug
        ''',
        'slugify("Hello, World! 2024")  # "hello-world-2024"',
    ),
    (
        "merges two sorted lists into one sorted list",
        '''
        def merge_sorted(left: list, right: list) -> list:
            merged, i, j = [], 0, 0
            while i < len(left) and j < len(right):
                if left[i] <= right[j]:
                    merged.append(left[i])
                    i += 1
                else:
                    merged.append(right[j])
                    j += 1
            merged.extend(left[i:])
            merged.extend(right[j:])
            return merged
        ''',
        "merge_sorted([1, 4, 9], [2, 3, 10])  # [1, 2, 3, 4, 9, 10]",
    ),
    (
        "finds the most common element in a list",
        '''
        from collections import Counter

        def most_common(items: list):
            if not items:
                raise ValueError("empty list")
            return Counter(items).most_common(1)[0][0]
        ''',
        'most_common(["a", "b", "a", "c"])  # "a"',
    ),
]


def topic_programming(rng: random.Random, n: int) -> list[Turn]:
    if rng.random() < 0.35:
        request, code, example = pick(rng, FUNCTIONS)
        ask = pick(rng, (f"Write a Python function that {request}.", f"Can you write me a function that {request}?", f"python function that {request}"))
        answer = f"Here you go:\n\n```python\n{dedent(code)}\n```\n\nExample:\n\n```python\n{example}\n```"
        turns = [(ask, answer)]
        followups = [
            ("Can you add a docstring and a test?", f"Sure. Add a one-line docstring under the `def` line that says what it returns, and a test like this:\n\n```python\ndef test_example():\n    assert {example.split('  #')[0]} == {example.split('# ')[1]}\n```"),
            ("What's the time complexity?", pick(rng, ("It's linear in the size of the input, O(n), and it uses at most O(n) extra memory.", "It does a constant amount of work per element, so O(n) overall."))),
        ]
        others = [f for f in FUNCTIONS if f[0] != request]
        switches = [(f"Nice. Now one that {r}?", f"```python\n{dedent(c)}\n```") for r, c, _ in rng.sample(others, 2)]
        return fill(rng, turns, followups, n, switches)
    questions, answer, followup = pick(rng, CODE_QA)
    turns = [(pick(rng, questions), answer)]
    followups = [followup] if followup else []
    switches = [
        (f"Another question: {qs[0][0].lower()}{qs[0][1:]}", a)
        for qs, a, _ in rng.sample([q for q in CODE_QA if q[1] != answer], 3)
    ]
    return fill(rng, turns, followups, n, switches)


# ---------------------------------------------------------------------------------------------
# Math word problems: the numbers are drawn at random and every answer is computed.

NAMES = ("Amara", "Ben", "Chen", "Dalia", "Emil", "Fatima", "Gus", "Hana", "Ivan", "Jo", "Kofi", "Lena", "Mateo", "Nadia", "Omar", "Priya", "Quinn", "Rosa", "Sami", "Tomás", "Uma", "Viktor", "Wen", "Yusuf", "Zoe")
PRONOUNS = {"Amara": "she", "Ben": "he", "Chen": "he", "Dalia": "she", "Emil": "he", "Fatima": "she", "Gus": "he", "Hana": "she", "Ivan": "he", "Jo": "they", "Kofi": "he", "Lena": "she", "Mateo": "he", "Nadia": "she", "Omar": "he", "Priya": "she", "Quinn": "they", "Rosa": "she", "Sami": "they", "Tomás": "he", "Uma": "she", "Viktor": "he", "Wen": "she", "Yusuf": "he", "Zoe": "she"}

MATH_SYSTEM = (
    "You are a patient maths tutor. Show each step of the calculation before giving the final answer.",
    "You are a helpful assistant. When solving word problems, explain the reasoning briefly and state the answer clearly.",
)


def math_shopping(rng: random.Random) -> tuple[str, str, list[Turn]]:
    name = pick(rng, NAMES)
    a, b = rng.randint(2, 9), rng.randint(2, 12)
    p1, p2 = rng.randint(150, 600) / 100, rng.randint(50, 250) / 100
    total = a * p1 + b * p2
    note = 20 if total < 20 else 50 if total < 50 else 100
    they = PRONOUNS[name]
    q = f"{name} buys {a} notebooks at {money(p1)} each and {b} pens at {money(p2)} each. How much does {they} spend in total?"
    ans = (
        f"Notebooks: {a} × {money(p1)} = {money(a * p1)}\n"
        f"Pens: {b} × {money(p2)} = {money(b * p2)}\n"
        f"Total: {money(a * p1)} + {money(b * p2)} = **{money(total)}**"
    )
    follow = [(f"And how much change would {they} get from a {money(note).replace('.00', '')} note?", f"{money(note)} − {money(total)} = **{money(note - total)}** in change.")]
    return q, ans, follow


def math_speed(rng: random.Random) -> tuple[str, str, list[Turn]]:
    hours, minutes = rng.randint(1, 4), pick(rng, (0, 15, 20, 30, 40, 45))
    speed = rng.randint(60, 180)
    time_h = hours + minutes / 60
    distance = round(speed * time_h)
    speed_exact = distance / time_h
    q = f"A train travels {distance} km in {hours} hour{'s' if hours > 1 else ''}" + (f" and {minutes} minutes" if minutes else "") + ". What is its average speed?"
    ans = (
        (f"First convert the time to hours: {minutes} minutes = {num(minutes / 60, 3)} h, so the time is {num(time_h, 3)} h.\n" if minutes else "")
        + f"Average speed = distance ÷ time = {distance} km ÷ {num(time_h, 3)} h ≈ **{num(speed_exact, 1)} km/h**."
    )
    d2 = rng.randint(50, 600)
    t2 = d2 / speed_exact
    h2, m2 = divmod(round(t2 * 60), 60)
    follow = [(f"How long would it take to cover {d2} km at that speed?", f"Time = distance ÷ speed = {d2} ÷ {num(speed_exact, 1)} ≈ {num(t2, 2)} hours, which is about **{h2} h {m2} min**.")]
    return q, ans, follow


def math_discount(rng: random.Random) -> tuple[str, str, list[Turn]]:
    item = pick(rng, ("jacket", "pair of headphones", "bicycle", "lamp", "backpack", "winter coat"))
    price = rng.randint(20, 400)
    pct = pick(rng, (10, 15, 20, 25, 30, 40, 50))
    sale = price * (100 - pct) / 100
    q = f"A {item} costs {money(price)} and is on sale for {pct}% off. What is the sale price?"
    ans = f"The discount is {pct}% of {money(price)} = {money(price * pct / 100)}.\nSale price = {money(price)} − {money(price * pct / 100)} = **{money(sale)}**."
    tax = pick(rng, (5, 7, 8, 10, 20))
    follow = [(f"If {tax}% sales tax is added after the discount, what's the final price?", f"Tax = {tax}% of {money(sale)} = {money(sale * tax / 100)}.\nFinal price = {money(sale)} + {money(sale * tax / 100)} = **{money(sale * (1 + tax / 100))}**.")]
    return q, ans, follow


def math_paint(rng: random.Random) -> tuple[str, str, list[Turn]]:
    length, width, height = rng.randint(30, 70) / 10, rng.randint(25, 50) / 10, pick(rng, (2.4, 2.5, 2.6, 2.7))
    coverage = pick(rng, (8, 10, 12))
    walls = 2 * (length + width) * height
    litres = walls * 2 / coverage
    q = f"My room is {num(length)} m long, {num(width)} m wide and {num(height)} m high. How much paint do I need for two coats on the walls if one litre covers {coverage} m²? Ignore doors and windows."
    ans = (
        f"Perimeter = 2 × ({num(length)} + {num(width)}) = {num(2 * (length + width))} m\n"
        f"Wall area = {num(2 * (length + width))} × {num(height)} = {num(walls)} m²\n"
        f"Two coats = {num(walls * 2)} m²\n"
        f"Paint = {num(walls * 2)} ÷ {coverage} ≈ {num(litres)} litres, so buy **{math.ceil(litres)} litres**."
    )
    follow = [("Tins come in 2.5 litre sizes. How many should I buy?", f"{num(litres)} ÷ 2.5 ≈ {num(litres / 2.5)}, so you need **{math.ceil(litres / 2.5)} tins** ({num(math.ceil(litres / 2.5) * 2.5)} litres).")]
    return q, ans, follow


def math_savings(rng: random.Random) -> tuple[str, str, list[Turn]]:
    goal = rng.randint(12, 60) * 100
    have = rng.randint(1, goal // 300) * 100
    months = rng.randint(4, 18)
    per_month = (goal - have) / months
    q = f"I want to save {money(goal)} in {months} months and I already have {money(have)}. How much do I need to put aside each month?"
    ans = f"You still need {money(goal)} − {money(have)} = {money(goal - have)}.\nSpread over {months} months: {money(goal - have)} ÷ {months} = **{money(per_month)} per month**."
    can = max(10, round(per_month * 0.7 / 10) * 10)
    follow = [(f"What if I can only manage {money(can)} a month?", f"{money(goal - have)} ÷ {money(can)} ≈ {num((goal - have) / can)}, so it would take **{math.ceil((goal - have) / can)} months** instead of {months}.")]
    return q, ans, follow


def math_average(rng: random.Random) -> tuple[str, str, list[Turn]]:
    scores = [rng.randint(55, 98) for _ in range(rng.randint(3, 6))]
    total = sum(scores)
    mean = total / len(scores)
    q = f"My test scores so far are {join_list([str(s) for s in scores])}. What's my average?"
    ans = f"Add them up: {' + '.join(map(str, scores))} = {total}.\nDivide by the number of tests: {total} ÷ {len(scores)} = **{num(mean)}**."
    target = min(95, math.floor(mean) + rng.randint(2, 8))
    needed = target * (len(scores) + 1) - total
    if needed <= 100:
        reply = f"To average {target} over {len(scores) + 1} tests you need {target} × {len(scores) + 1} = {target * (len(scores) + 1)} points in total. You have {total}, so you need **{needed}** on the next test."
    else:
        reply = f"You'd need {target} × {len(scores) + 1} − {total} = {needed} points on the next test, which is more than 100, so it isn't possible with one test. Two more good results could get you there, though."
    follow = [(f"What do I need on the next test to get my average up to {target}?", reply)]
    return q, ans, follow


def math_cyclists(rng: random.Random) -> tuple[str, str, list[Turn]]:
    v1, v2 = rng.randint(12, 30), rng.randint(10, 28)
    distance = rng.randint(10, 90)
    t = distance / (v1 + v2)
    a, b = pick(rng, NAMES), pick(rng, NAMES)
    while b == a:
        b = pick(rng, NAMES)
    q = f"{a} and {b} start {distance} km apart and cycle towards each other, {a} at {v1} km/h and {b} at {v2} km/h. After how long do they meet?"
    ans = f"They close the gap at {v1} + {v2} = {v1 + v2} km/h.\nTime = {distance} ÷ {v1 + v2} ≈ {num(t, 3)} h ≈ **{round(t * 60)} minutes**."
    follow = [(f"How far has {a} ridden by then?", f"{v1} km/h × {num(t, 3)} h ≈ **{num(v1 * t, 1)} km**, so {b} has ridden the other {num(distance - v1 * t, 1)} km.")]
    return q, ans, follow


def math_ages(rng: random.Random) -> tuple[str, str, list[Turn]]:
    while True:
        young, k, years = rng.randint(2, 12), rng.randint(2, 5), rng.randint(2, 12)
        old = k * young
        if (old + years) % (young + years) == 0 and (old + years) // (young + years) > 1:
            m = (old + years) // (young + years)
            break
    a, b = pick(rng, NAMES), pick(rng, NAMES)
    while b == a:
        b = pick(rng, NAMES)
    q = f"{a} is {k} times as old as {b}. In {years} years, {a} will be {m} times as old as {b}. How old are they now?"
    ans = (
        f"Let {b}'s age be x, so {a} is {k}x.\n"
        f"In {years} years: {k}x + {years} = {m}(x + {years})\n"
        f"{k}x + {years} = {m}x + {m * years}\n"
        + (f"{k - m}x = {m * years - years}\nx = {young}\n\n" if k - m > 1 else f"x = {young}\n\n")
        + f"So **{b} is {young}** and **{a} is {old}**. Check: in {years} years they will be {young + years} and {old + years}, and {old + years} = {m} × {young + years}. ✓"
    )
    return q, ans, []


def math_interest(rng: random.Random) -> tuple[str, str, list[Turn]]:
    principal = rng.randint(5, 100) * 100
    rate = pick(rng, (2, 3, 3.5, 4, 5, 6))
    years = rng.randint(2, 10)
    final = principal * (1 + rate / 100) ** years
    q = f"If I invest {money(principal)} at {num(rate)}% a year, compounded annually, how much will I have after {years} years?"
    ans = f"Use A = P × (1 + r)ⁿ:\nA = {money(principal)} × (1 + {num(rate / 100, 3)})^{years} = {money(principal)} × {(1 + rate / 100) ** years:.4f} ≈ **{money(final)}**.\nThat's {money(final - principal)} of interest."
    simple = principal * rate / 100 * years
    follow = [("How much would simple interest give instead?", f"Simple interest = P × r × n = {money(principal)} × {num(rate / 100, 3)} × {years} = {money(simple)}, for a total of **{money(principal + simple)}**, which is {money(final - principal - simple)} less than with compounding.")]
    return q, ans, follow


def math_percent_change(rng: random.Random) -> tuple[str, str, list[Turn]]:
    before = rng.randint(20, 200) * 100
    after = before + rng.randint(-before // 4, before // 2)
    change = (after - before) / before * 100
    word = "grew" if after >= before else "shrank"
    q = f"A town's population went from {before:,} to {after:,}. By what percentage did it change?"
    ans = f"Change = {after:,} − {before:,} = {after - before:,}.\nPercentage = {after - before:,} ÷ {before:,} × 100 ≈ **{num(change, 1)}%**, so the population {word} by {num(abs(change), 1)}%."
    return q, ans, []


def math_units(rng: random.Random) -> tuple[str, str, list[Turn]]:
    km = rng.randint(3, 500)
    miles = km / 1.609344
    q = pick(rng, (f"How many miles is {km} km?", f"Convert {km} kilometres to miles."))
    ans = f"One mile is 1.609344 km, so {km} ÷ 1.609344 ≈ **{num(miles, 1)} miles**."
    days = rng.randint(2, 30)
    follow = [(f"Unrelated, but how many minutes are there in {days} days?", f"{days} × 24 × 60 = **{days * 1440:,} minutes**.")]
    return q, ans, follow


def math_trip_budget(rng: random.Random) -> tuple[str, str, list[Turn]]:
    budget = rng.randint(8, 40) * 100
    days = rng.randint(3, 12)
    hotel = rng.randint(45, 180)
    food = rng.randint(20, 70)
    spent = (hotel + food) * days
    left = budget - spent
    q = f"I have €{budget:,} for a {days}-day trip. The hotel is €{hotel} a night and I expect to spend about €{food} a day on food. How much is left for everything else?"
    if left >= 0:
        ans = f"Hotel: {days} × €{hotel} = €{hotel * days:,}\nFood: {days} × €{food} = €{food * days:,}\nTotal: €{spent:,}\n\nLeft over: €{budget:,} − €{spent:,} = **€{left:,}**, or about €{left / days:.0f} a day."
    else:
        ans = f"Hotel: {days} × €{hotel} = €{hotel * days:,}\nFood: {days} × €{food} = €{food * days:,}\nTotal: €{spent:,}\n\nThat's **€{-left:,} over budget**. A cheaper hotel or a shorter stay would close the gap."
    return q, ans, []


MATH_PROBLEMS = (
    math_shopping,
    math_speed,
    math_discount,
    math_paint,
    math_savings,
    math_average,
    math_cyclists,
    math_ages,
    math_interest,
    math_percent_change,
    math_units,
    math_trip_budget,
)


def topic_math(rng: random.Random, n: int) -> list[Turn]:
    problem = pick(rng, MATH_PROBLEMS)
    q, ans, follow = problem(rng)
    turns = [(q, ans)]
    switches = []
    for other in rng.sample([p for p in MATH_PROBLEMS if p is not problem], 3):
        q2, a2, _ = other(rng)
        switches.append((f"Here's another one. {q2}", a2))
    return fill(rng, turns, follow, n, switches)


# ---------------------------------------------------------------------------------------------
# History

HISTORY = [
    {
        "event": "the Moon landing",
        "ask": "When did the first Moon landing happen?",
        "when": "Apollo 11 landed on the Moon on 20 July 1969.",
        "what": "Neil Armstrong and Buzz Aldrin spent about two and a half hours walking on the surface, collecting rock samples and setting up experiments, while Michael Collins orbited above in the command module.",
        "why": "It was the first time humans set foot on another world, the defining moment of the space race between the United States and the Soviet Union, and one of the most widely watched television broadcasts of its time.",
        "who": "Neil Armstrong, Buzz Aldrin and Michael Collins, supported by hundreds of thousands of engineers, scientists and workers in the Apollo programme.",
    },
    {
        "event": "the fall of the Berlin Wall",
        "ask": "When did the Berlin Wall fall?",
        "when": "The Berlin Wall fell on the night of 9 November 1989.",
        "what": "After weeks of protests in East Germany, a confused announcement about new travel rules led crowds to gather at the border crossings, and the guards eventually opened the gates. People climbed onto the wall and began to chip pieces off it.",
        "why": "It became the symbol of the end of the Cold War in Europe and led, less than a year later, to the reunification of Germany in October 1990.",
        "who": "Ordinary East and West Berliners, the East German government, and Günter Schabowski, the official whose press conference set events in motion.",
    },
    {
        "event": "the Magna Carta",
        "ask": "When was the Magna Carta sealed?",
        "when": "The Magna Carta was sealed by King John of England in June 1215 at Runnymede, near Windsor.",
        "what": "It was a peace treaty between the king and a group of rebel barons. It promised protection from illegal imprisonment, access to swift justice, and limits on payments to the Crown.",
        "why": "Most of its clauses were soon annulled or rewritten, but it established the idea that the ruler is also subject to the law, which later inspired constitutional documents around the world.",
        "who": "King John, the rebel barons, and Stephen Langton, the Archbishop of Canterbury, who helped draft it.",
    },
    {
        "event": "the French Revolution",
        "ask": "When did the French Revolution start?",
        "when": "The French Revolution began in 1789; the storming of the Bastille on 14 July 1789 is its most famous moment.",
        "what": "A financial crisis and widespread anger at privilege led to the meeting of the Estates-General, the creation of the National Assembly, the end of the absolute monarchy and, in 1793, the execution of King Louis XVI.",
        "why": "It spread ideas of popular sovereignty and equal rights before the law across Europe, and its Declaration of the Rights of Man and of the Citizen became a landmark text.",
        "who": "Louis XVI and Marie Antoinette, revolutionary leaders such as Maximilien Robespierre and Georges Danton, and, at the end of the period, Napoleon Bonaparte.",
    },
    {
        "event": "Gutenberg's printing press",
        "ask": "When did Gutenberg invent his printing press?",
        "when": "Johannes Gutenberg developed his printing press with movable metal type in Mainz around 1440 to 1450, and the Gutenberg Bible was printed around 1455.",
        "what": "He combined several inventions: durable metal type that could be cast quickly, an oil-based ink that stuck to metal, and a press adapted from those used for wine and paper.",
        "why": "Books became far cheaper and faster to make, which helped spread literacy and new ideas, and played a big role in the Reformation and the Scientific Revolution.",
        "who": "Johannes Gutenberg, his business partner Johann Fust, and Peter Schöffer, who later ran one of the first printing businesses.",
    },
    {
        "event": "the first powered flight",
        "ask": "When was the first powered flight?",
        "when": "Orville and Wilbur Wright made the first controlled, powered flight on 17 December 1903 at Kitty Hawk, North Carolina.",
        "what": "The first flight, with Orville at the controls, lasted about 12 seconds and covered roughly 37 metres. Later that day Wilbur flew for 59 seconds.",
        "why": "Their real breakthrough was three-axis control, which let a pilot steer and balance the aircraft. It is still the basis of how fixed-wing aircraft are flown.",
        "who": "Wilbur and Orville Wright, two bicycle makers from Dayton, Ohio, helped by their mechanic Charlie Taylor, who built the engine.",
    },
    {
        "event": "the Declaration of Independence",
        "ask": "When was the Declaration of Independence adopted?",
        "when": "The United States Declaration of Independence was adopted by the Continental Congress on 4 July 1776.",
        "what": "It announced that the thirteen American colonies no longer considered themselves part of the British Empire and listed their grievances against King George III.",
        "why": "Its statement that all men are created equal with rights to life, liberty and the pursuit of happiness became a reference point for later movements for rights and independence.",
        "who": "Thomas Jefferson wrote the first draft, with a committee that included John Adams and Benjamin Franklin.",
    },
    {
        "event": "the construction of the Great Pyramid of Giza",
        "ask": "When was the Great Pyramid of Giza built?",
        "when": "The Great Pyramid was built for the pharaoh Khufu around 2560 BC.",
        "what": "It was made from roughly 2.3 million stone blocks and was originally about 146 metres tall, the tallest human-made structure in the world for over three thousand years.",
        "why": "It shows the organisational power of the Egyptian state in the Old Kingdom, and it is the only one of the Seven Wonders of the Ancient World still standing.",
        "who": "Pharaoh Khufu and a workforce of skilled builders and labourers, who, the evidence from nearby workers' villages suggests, were paid and fed rather than enslaved.",
    },
    {
        "event": "the end of the Western Roman Empire",
        "ask": "When did the Western Roman Empire fall?",
        "when": "The Western Roman Empire is usually said to have ended in 476 AD, when Romulus Augustulus was deposed by Odoacer.",
        "what": "It was the end of a long decline: economic trouble, civil wars and pressure from groups such as the Goths and Vandals had weakened the western half of the empire for decades.",
        "why": "Historians use it to mark the end of antiquity and the beginning of the Middle Ages in western Europe, although the Eastern Roman (Byzantine) Empire continued until 1453.",
        "who": "Romulus Augustulus, the last western emperor, and Odoacer, a Germanic general who became King of Italy.",
    },
    {
        "event": "the Black Death",
        "ask": "When did the Black Death reach Europe?",
        "when": "The Black Death reached Europe in 1347 and spread across the continent until about 1351.",
        "what": "It was a pandemic of plague, caused by the bacterium Yersinia pestis and spread by fleas on rats and by people. It killed perhaps a third to a half of Europe's population.",
        "why": "The loss of so many workers raised wages and weakened the old feudal system, and the trauma left a deep mark on art, religion and society.",
        "who": "Almost everyone in Europe, the Middle East and North Africa was affected; the chronicler Giovanni Boccaccio described it in the introduction to the Decameron.",
    },
    {
        "event": "the launch of Sputnik",
        "ask": "When was Sputnik launched?",
        "when": "The Soviet Union launched Sputnik 1, the first artificial satellite, on 4 October 1957.",
        "what": "It was a polished metal sphere about 58 centimetres across with four antennas, and it broadcast a simple radio beep that amateurs around the world could pick up.",
        "why": "It started the space age and the space race, and led the United States to create NASA in 1958 and invest heavily in science education.",
        "who": "Soviet engineers led by the chief designer Sergei Korolev.",
    },
    {
        "event": "the Universal Declaration of Human Rights",
        "ask": "When was the Universal Declaration of Human Rights adopted?",
        "when": "The United Nations General Assembly adopted the Universal Declaration of Human Rights in Paris on 10 December 1948.",
        "what": "It sets out thirty articles of basic rights and freedoms, such as the right to life, freedom from torture and slavery, and freedom of thought and expression.",
        "why": "It was the first international agreement on the rights every person should have, and it has influenced many constitutions and later human rights treaties.",
        "who": "A drafting committee chaired by Eleanor Roosevelt, with René Cassin, Peng Chun Chang and Charles Malik among its key members.",
    },
    {
        "event": "the invention of the World Wide Web",
        "ask": "When was the World Wide Web invented?",
        "when": "Tim Berners-Lee proposed the World Wide Web at CERN in 1989, and the first website went online in 1991.",
        "what": "He combined hypertext with the internet, creating HTML for pages, HTTP for transferring them, and URLs for addressing them, along with the first browser and web server.",
        "why": "CERN put the technology in the public domain in 1993, so anyone could build on it without paying royalties, which helped the web grow explosively.",
        "who": "Tim Berners-Lee, with the help of Robert Cailliau and colleagues at CERN.",
    },
    {
        "event": "the decipherment of the Rosetta Stone",
        "ask": "When was the Rosetta Stone deciphered?",
        "when": "The Rosetta Stone was found in 1799 by French soldiers in Egypt, and Jean-François Champollion announced his decipherment of hieroglyphs in 1822.",
        "what": "The stone carries the same decree in three scripts: hieroglyphic, Demotic and ancient Greek. Because scholars could read the Greek, it gave them a key to the other two.",
        "why": "It opened up thousands of years of Egyptian writing, from temple inscriptions to everyday letters, to modern readers.",
        "who": "Jean-François Champollion, building on earlier work by Thomas Young.",
    },
    {
        "event": "the opening of the Suez Canal",
        "ask": "When did the Suez Canal open?",
        "when": "The Suez Canal opened in November 1869.",
        "what": "It connects the Mediterranean Sea with the Red Sea across Egypt, so ships travelling between Europe and Asia no longer have to sail around Africa.",
        "why": "It cut thousands of kilometres off the voyage between Europe and South Asia and became one of the most important trade routes in the world.",
        "who": "The French diplomat Ferdinand de Lesseps led the project, built by the Suez Canal Company with the labour of many thousands of Egyptian workers.",
    },
    {
        "event": "Nelson Mandela's release from prison",
        "ask": "When was Nelson Mandela released from prison?",
        "when": "Nelson Mandela was released from prison on 11 February 1990, after 27 years.",
        "what": "His release followed years of internal resistance and international pressure against apartheid, and it opened negotiations to end the system.",
        "why": "It led to South Africa's first democratic elections in April 1994, after which Mandela became the country's first Black president.",
        "who": "Nelson Mandela, President F. W. de Klerk, and the many activists of the anti-apartheid movement; Mandela and de Klerk shared the Nobel Peace Prize in 1993.",
    },
]

HISTORY_SYSTEM = (
    "You are a knowledgeable history tutor. Give accurate dates and explain why events mattered.",
    "You are a helpful assistant who answers history questions clearly for a general audience.",
)


def topic_history(rng: random.Random, n: int) -> list[Turn]:
    item = pick(rng, HISTORY)
    event = item["event"]
    kind = rng.randrange(3)
    if kind == 0:
        turns = [(pick(rng, (item["ask"], item["ask"].lower(), item["ask"].replace("When", "What year", 1))), item["when"])]
        followups = [("What actually happened?", item["what"]), ("Why does it matter?", item["why"])]
    elif kind == 1:
        turns = [(pick(rng, (f"Can you tell me about {event}?", f"Give me a short summary of {event}.")), f"{item['when']} {item['what']}")]
        followups = [("Why was it important?", item["why"])]
    else:
        turns = [(f"Why was {event} important?", f"{item['why']}\n\nFor context: {item['when']}")]
        followups = [("What happened exactly?", item["what"])]
    followups.append(("Who were the key people involved?", item["who"]))
    return fill(rng, turns, followups, n)


# ---------------------------------------------------------------------------------------------
# Science explainers

SCIENCE = [
    (
        "Why is the sky blue?",
        "Sunlight contains all colours. As it passes through the atmosphere, it bumps into gas molecules that are much smaller than the wavelength of light, and these scatter short wavelengths (blue and violet) far more strongly than long ones (red and orange). This is called Rayleigh scattering. Blue light is scattered all over the sky, so wherever you look, some of it reaches your eyes. We see blue rather than violet partly because sunlight has less violet and our eyes are more sensitive to blue.",
        "Sunlight is made of all the colours mixed together. When it flies through the air, the blue part bounces around the most, so the whole sky is filled with blue light.",
    ),
    (
        "Why do we have seasons?",
        "Seasons happen because Earth's axis is tilted by about 23.4 degrees relative to its orbit. For part of the year the northern hemisphere leans towards the Sun: sunlight hits it more directly and days are longer, so it is summer there. Six months later it leans away and has winter, while the southern hemisphere has the opposite season. The distance to the Sun changes a little during the year, but that is not what causes the seasons.",
        "The Earth is a little tipped over, like a spinning top leaning to one side. When your half of the Earth leans towards the Sun, you get more sunshine and it's summer. When it leans away, it's winter.",
    ),
    (
        "What causes the tides?",
        "Tides are caused mainly by the Moon's gravity, which pulls slightly harder on the side of Earth facing it than on the far side. That difference stretches the oceans into two bulges, one facing the Moon and one opposite it, and as Earth rotates, most coastlines pass through both bulges each day, giving about two high tides and two low tides. The Sun has a smaller effect: when the Sun and Moon line up, at full and new moon, the tides are larger (spring tides); when they are at right angles, the tides are smaller (neap tides).",
        "The Moon pulls on the sea a tiny bit, and the water piles up a little on the side near the Moon and on the opposite side. As the Earth turns, the beach moves through those piles of water, so the sea comes in and goes out.",
    ),
    (
        "How does photosynthesis work?",
        "Plants capture light energy with chlorophyll, the green pigment in their chloroplasts. In the light-dependent reactions, that energy splits water molecules, releasing oxygen and producing energy carriers called ATP and NADPH. In the Calvin cycle, the plant uses those carriers to turn carbon dioxide from the air into sugars. Overall: carbon dioxide plus water plus light gives glucose and oxygen. The sugar feeds the plant and, through food chains, almost every other living thing.",
        "Plants make their own food from sunshine, water and air. Their green leaves catch sunlight and use it to turn water and air into sugar, and they breathe out the oxygen we need.",
    ),
    (
        "How do vaccines work?",
        "A vaccine shows your immune system a harmless version or piece of a germ, such as an inactivated virus, a single protein, or instructions for making that protein. Your immune system reacts as if it were a real infection: it makes antibodies and, importantly, memory cells. If you meet the real germ later, those memory cells recognise it and respond much faster and more strongly, often stopping the illness before it becomes serious.",
        "A vaccine is like showing your body a 'wanted' poster of a germ. Your body learns what the germ looks like, so if the real one ever shows up, it can catch it quickly.",
    ),
    (
        "What's the difference between weather and climate?",
        "Weather is what the atmosphere is doing at a particular time and place: today's rain, temperature and wind. Climate is the long-term pattern of weather in a region, usually averaged over thirty years or more. A cold week says little about the climate, just as one bad day doesn't describe your whole year. A common way to put it: climate is what you expect, weather is what you get.",
        "Weather is what it's like outside today. Climate is what it's usually like in a place over many, many years.",
    ),
    (
        "Why does ice float?",
        "Most substances are denser as solids than as liquids, but water is unusual. When it freezes, hydrogen bonds lock the molecules into an open, hexagonal lattice that takes up about 9% more space than liquid water. Because ice is less dense, it floats. This matters for life: lakes freeze from the top down, and the ice layer insulates the water below so fish can survive the winter.",
        "When water freezes, its tiny pieces hold hands in a roomy pattern that takes up more space. That makes ice lighter than the same amount of water, so it floats.",
    ),
    (
        "How does a fridge keep food cold?",
        "A fridge moves heat from the inside to the outside using a refrigerant that circulates in a closed loop. Inside the fridge, the refrigerant evaporates at low pressure, and evaporating absorbs heat from the air around it. A compressor then squeezes the vapour, which makes it hot, and it releases that heat through the coils at the back as it condenses back into a liquid. An expansion valve drops the pressure again, and the cycle repeats. That's why the back of a fridge feels warm.",
        "A fridge doesn't make cold. It carries heat out of the box and dumps it out the back, like a tiny heat bucket brigade.",
    ),
    (
        "Why do leaves change colour in autumn?",
        "Leaves are green because of chlorophyll, which the tree constantly breaks down and rebuilds during summer. As days shorten and temperatures drop, trees stop making new chlorophyll and pull nutrients back into the branches. As the green fades, yellow and orange pigments called carotenoids, which were there all along, become visible. Some trees also produce new red and purple pigments, anthocyanins, in autumn, especially after sunny days and cool nights.",
        "The green in leaves is like a paint that the tree keeps touching up all summer. In autumn it stops, the green fades, and the yellow and orange that were hiding underneath show through.",
    ),
    (
        "How do noise-cancelling headphones work?",
        "Small microphones on the headphones listen to the sound around you. A chip then creates a sound wave that is the mirror image of that noise: where the noise pushes the air, the new wave pulls it, and vice versa. When the two meet in your ear, they cancel each other out, which is called destructive interference. It works best on steady, low sounds like engine hum, which is why voices and sudden noises still get through a bit.",
        "The headphones listen to the noise and play the exact opposite sound at the same time. The two sounds cancel each other out, so you hear quiet.",
    ),
    (
        "How does GPS work?",
        "GPS satellites constantly broadcast signals saying exactly where they are and what time it is according to their very precise atomic clocks. Your receiver measures how long each signal took to arrive, which tells it the distance to each satellite. With signals from at least four satellites, it can solve for its position in three dimensions and correct its own clock. The system even has to correct for effects from relativity, because the satellites' clocks tick at a slightly different rate than clocks on the ground.",
        "Satellites in space keep shouting the time. Your phone listens to several of them, works out how far away each one is from how late the message arrives, and figures out where you must be.",
    ),
    (
        "Why does bread rise?",
        "Bread rises because yeast, a living fungus, feeds on sugars in the flour and produces carbon dioxide gas and a little alcohol. Kneading develops gluten, a stretchy network of proteins that traps the gas bubbles, so the dough puffs up like a balloon. In the oven, the gas expands, the yeast dies off, the alcohol evaporates, and the gluten and starch set into the airy structure of the finished loaf.",
        "Tiny living things called yeast eat the sugar in the dough and burp out gas. The dough is stretchy, so the bubbles get trapped and the bread puffs up.",
    ),
    (
        "What is DNA?",
        "DNA, deoxyribonucleic acid, is the molecule that carries the genetic instructions of living things. It is shaped like a twisted ladder, a double helix, whose rungs are pairs of four bases: adenine with thymine and cytosine with guanine. The order of those bases encodes genes, which cells read to build proteins. Because each strand can be used as a template for the other, DNA can be copied accurately when cells divide.",
        "DNA is like a recipe book inside every cell of your body. It's written with only four letters, and it tells your body how to build and run itself.",
    ),
    (
        "What is a black hole?",
        "A black hole is a region where so much mass is packed into so small a space that nothing, not even light, can escape its gravity once it crosses the boundary called the event horizon. Many form when very massive stars collapse at the end of their lives. Supermassive black holes, millions or billions of times the mass of the Sun, sit at the centres of most large galaxies, including our own. We detect them from their effect on nearby stars and gas, and from gravitational waves when they merge.",
        "A black hole is a place in space where gravity pulls so hard that nothing can get out, not even light. That's why it looks black.",
    ),
]

SCIENCE_SYSTEM = (
    "You are a science communicator. Explain clearly and accurately, without jargon where possible.",
    "You are a helpful assistant. Answer science questions accurately and concisely.",
)


def topic_science(rng: random.Random, n: int) -> list[Turn]:
    question, answer, simple = pick(rng, SCIENCE)
    turns = [(pick(rng, (question, question.lower(), f"Quick question: {question[0].lower()}{question[1:]}")), answer)]
    followups = [(pick(rng, ("Can you explain it like I'm five?", "Can you make that simpler for a child?", "ELI5 please")), simple)]
    switches = [(f"Cool. {q}", a) for q, a, _ in rng.sample([s for s in SCIENCE if s[0] != question], 3)]
    return fill(rng, turns, followups, n, switches)


# ---------------------------------------------------------------------------------------------
# Customer support for a made-up shop, Brightleaf Home.

SUPPORT_SYSTEM = (
    "You are the support assistant for Brightleaf Home, an online shop for lamps, textiles and houseplants. Be polite, ask for the order number when you need it, and never promise anything the shop's policy does not allow. Policy: free returns within 30 days; damaged items are replaced or refunded; refunds take 3-5 business days.",
    "You are a customer service agent for Brightleaf Home. Keep replies short and friendly.",
)
PRODUCTS = (
    ("a ceramic table lamp", 64.00),
    ("a linen duvet cover", 89.50),
    ("a set of four cushion covers", 42.00),
    ("a large monstera plant", 55.00),
    ("a brass floor lamp", 149.00),
    ("a wool throw blanket", 72.00),
    ("a pair of rattan plant pots", 38.50),
    ("a set of cotton bath towels", 46.00),
)
WEEKDAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday")
DEPOTS = ("Leeds", "Bristol", "Glasgow", "Norwich", "Cardiff", "Leicester")


def support_order(rng: random.Random) -> str:
    return f"BL-{rng.randint(10000, 99999)}"


def support_late(rng: random.Random) -> list[Turn]:
    order, (item, price) = support_order(rng), pick(rng, PRODUCTS)
    name = pick(rng, NAMES)
    day, ship, deadline = rng.sample(WEEKDAYS, 3)
    return [
        (pick(rng, (f"Hi, my order still hasn't arrived. It was supposed to come on {day}.", f"where is my parcel?? it was due {day}", f"Hello, I'm {name}. My delivery is late, it should have been here {day}.")),
         "I'm sorry about the wait. Could you give me your order number? It starts with BL and you'll find it in your confirmation email."),
        (f"Sure, it's {order}.",
         f"Thanks. I can see order {order} for {item}. It left our warehouse on {ship}, and the carrier's last scan shows it at the {pick(rng, DEPOTS)} depot. Parcels are sometimes held there for a day when volumes are high. If it hasn't moved by {deadline}, I can send a replacement or refund it in full, whichever you prefer."),
        ("If it doesn't show up I'd rather have a refund.",
         f"Understood. I've added a note to your order: if there is no new tracking scan by {deadline}, the refund of {money(price, '£')} goes back to your original payment method automatically, and you won't need to contact us again. Refunds take 3-5 business days to appear."),
        (pick(rng, ("Great, thanks for your help!", "ok thanks", "Thank you, that's reassuring.")),
         pick(rng, ("You're welcome! I hope it turns up sooner than that.", "My pleasure. Sorry again for the delay!"))),
    ]


def support_damaged(rng: random.Random) -> list[Turn]:
    order, (item, price) = support_order(rng), pick(rng, PRODUCTS)
    return [
        (f"My order {order} arrived today but {item} is damaged. {pick(rng, ('The box was crushed.', 'There is a big crack in it.', 'It looks like it was dropped.'))}",
         f"I'm really sorry, that's not how it should arrive. Could you send a photo of the damage and of the outer box by replying to your order email? Once we have it, I can send a replacement or give you a full refund of {money(price, '£')}."),
        ("I've just sent the photos. I'd like a replacement please.",
         f"Thank you, the photos came through. I've booked a replacement of {item}; it will ship within two business days and you'll get a new tracking link by email. You don't need to send the damaged one back; please recycle it or dispose of it safely."),
        ("Do I have to pay shipping again?", "No, the replacement is completely free, including delivery."),
        ("Perfect, thank you.", "You're welcome, and sorry again for the trouble. Enjoy your new order when it arrives!"),
    ]


def support_return(rng: random.Random) -> list[Turn]:
    order, (item, price) = support_order(rng), pick(rng, PRODUCTS)
    days = rng.randint(3, 45)
    if days <= 30:
        policy = f"Yes, you can. Your order was delivered {days} days ago, and returns are free within 30 days. Go to 'My orders', choose {order} and click 'Return an item'. You'll get a prepaid label to print, or a QR code to show at the drop-off point."
        second = ("How long until I get my money back?", f"Once the parcel reaches our warehouse, we check it within two business days, and then the refund of {money(price, '£')} takes 3-5 business days to appear on your statement.")
    else:
        policy = f"I'm sorry, your order was delivered {days} days ago, which is outside our 30-day return window, so I can't offer a standard return. If the item is faulty, though, it's covered by the guarantee, and we can look at a repair or replacement."
        second = ("It's not faulty, I just don't like it.", "I understand. In that case I'm afraid we can't take it back, but you could try reselling it or giving it to a friend. I'm sorry I couldn't help more with this one.")
    return [
        (f"Can I return {item}? Order {order}.", policy),
        second,
        ("Ok, thanks for explaining.", "You're welcome. Have a lovely day!"),
    ]


def support_address(rng: random.Random) -> list[Turn]:
    order = support_order(rng)
    street = f"{rng.randint(1, 120)} {pick(rng, ('Mill Lane', 'Station Road', 'Church Street', 'Park Avenue', 'Orchard Close', 'High Street'))}"
    shipped = rng.random() < 0.5
    if shipped:
        reply = f"Thanks. Order {order} has already been handed to the carrier, so I can't change the address from our side. You can redirect it yourself with the link in your shipping email; the carrier allows changes until the evening before delivery."
    else:
        reply = f"Thanks. Order {order} hasn't shipped yet, so I've updated the delivery address to {street}. You'll get an updated confirmation email in a few minutes."
    return [
        ("I need to change the delivery address on my order.", "No problem, I can check that for you. What's the order number and the new address?"),
        (f"It's {order}, and the new address is {street}.", reply),
        ("Thanks!", "You're welcome!"),
    ]


def support_subscription(rng: random.Random) -> list[Turn]:
    months = rng.randint(2, 14)
    return [
        ("How do I cancel my Plant Club subscription?",
         "You can cancel any time under 'Account' → 'Subscriptions' → 'Plant Club' → 'Cancel'. If you cancel before the 20th, next month's box won't be sent or charged. Can I ask why you're cancelling? It helps us improve."),
        (pick(rng, ("I'm moving abroad.", "It's a bit too expensive for me right now.", "I have too many plants already 😅")),
         f"Thanks for telling me. Before you go: you can also pause the subscription for up to three months instead of cancelling, and you keep your member discount. You've been with us for {months} months, so if you'd rather pause, I can set that up now."),
        ("No, please just cancel it.", "Done. Your Plant Club subscription is cancelled and you won't be charged again. You'll get a confirmation email shortly. Thanks for being a member!"),
    ]


def support_discount(rng: random.Random) -> list[Turn]:
    code = f"{pick(rng, ('SPRING', 'WELCOME', 'COSY', 'GREEN'))}{pick(rng, (10, 15, 20))}"
    minimum = pick(rng, (40, 50, 60))
    basket = rng.randint(20, minimum - 1)
    return [
        (f"The discount code {code} isn't working at checkout.",
         f"Sorry about that! {code} is valid, but it only applies to orders of {money(minimum, '£')} or more before delivery. What's the total in your basket at the moment?"),
        (f"It's {money(basket, '£')}.",
         f"That explains it: you'd need {money(minimum - basket, '£')} more for the code to apply. Our {pick(rng, ('beeswax candles', 'plant mister', 'coasters'))} are a popular small add-on if you want to reach the minimum."),
        ("Ah ok, makes sense.", "Great, let me know if it still doesn't work once the basket is over the minimum."),
    ]


SUPPORT_SCENARIOS = (support_late, support_damaged, support_return, support_address, support_subscription, support_discount)


def topic_support(rng: random.Random, n: int) -> list[Turn]:
    # A support chat ends when the issue is settled, so it may be shorter than ``n``.
    return pick(rng, SUPPORT_SCENARIOS)(rng)[:n]


# ---------------------------------------------------------------------------------------------
# Writing help

FORMAL = [
    ("Hey, can't make it tomorrow, something came up. Can we do next week?", "Unfortunately, I am unable to attend tomorrow's meeting due to an unexpected commitment. Would it be possible to reschedule for next week?"),
    ("Thanks a ton for the help, you guys are awesome!", "Thank you very much for your assistance; it is greatly appreciated."),
    ("The report's gonna be late, sorry.", "Please accept my apologies: the report will be delayed."),
    ("Can you send me the stuff from the meeting?", "Could you please send me the materials from the meeting?"),
    ("We messed up the order, we'll fix it asap.", "We made an error with your order and will correct it as soon as possible."),
    ("Just checking if you saw my last email.", "I am following up on my previous email to make sure it reached you."),
    ("No way we can finish this by Friday.", "I am afraid it will not be possible to complete this by Friday."),
    ("Let me know what you think.", "I would welcome your feedback."),
]
GRAMMAR = [
    ("Me and him went to the store yesterday.", "He and I went to the store yesterday.", "Use subject pronouns (he, I) when they do the action, and it's polite to put yourself last."),
    ("Their going to announce the results tomorrow.", "They're going to announce the results tomorrow.", "'They're' is short for 'they are'; 'their' shows possession."),
    ("Each of the students have a laptop.", "Each of the students has a laptop.", "'Each' is singular, so the verb is 'has'."),
    ("I could of helped if you asked.", "I could have helped if you had asked.", "'Could of' is a mishearing of 'could've'; and the past conditional needs 'had asked'."),
    ("The data shows that less people came this year.", "The data shows that fewer people came this year.", "Use 'fewer' for things you can count, like people, and 'less' for amounts, like time or water."),
    ("Its been a long week and the team lost it's focus.", "It's been a long week and the team lost its focus.", "'It's' means 'it is' or 'it has'; the possessive is 'its', with no apostrophe."),
    ("Between you and I, the plan won't work.", "Between you and me, the plan won't work.", "After a preposition like 'between', use the object pronoun 'me'."),
    ("Who did you give the keys to, him or I?", "Who did you give the keys to, him or me?", "The pronoun is the object of 'to', so it should be 'me'."),
]
EMAIL_REASONS = (
    ("my manager", "asking for Friday afternoon off", "Friday afternoon off", "I'd like to request Friday afternoon off to attend a family event. My tasks for the week will be finished by Thursday evening, and {colleague} has kindly agreed to cover anything urgent."),
    ("a landlord", "reporting a leaking tap", "Leaking kitchen tap", "I'm writing to let you know that the kitchen tap has been leaking steadily since {day}. Could you arrange for someone to take a look? I'm usually home after 5 pm, and I'm happy to give access at another time if that's easier."),
    ("a teacher", "explaining that my child missed school", "Absence on {day}", "My son was unwell on {day} and stayed at home to rest. He is feeling better now and will be back tomorrow. Please let me know if there is any work he should catch up on."),
    ("a colleague", "thanking them for their help on a project", "Thank you!", "I wanted to say a proper thank you for your help with the launch. Your work on the data checks on {day} caught two problems that would have been painful to fix later."),
    ("a client", "following up after a meeting", "Following up on our meeting", "Thank you for your time on {day}. As discussed, I'll send the revised proposal by the end of next week. In the meantime, please don't hesitate to get in touch if you have any questions."),
)

WRITING_SYSTEM = (
    "You are a writing assistant. Keep the writer's meaning, fix errors, and explain changes briefly.",
    "You help people write clear, friendly, professional English.",
)


def topic_writing(rng: random.Random, n: int) -> list[Turn]:
    kind = rng.randrange(3)
    if kind == 0:
        informal, formal = pick(rng, FORMAL)
        turns = [(pick(rng, (f"Can you make this sound more formal? \"{informal}\"", f"Rewrite formally: {informal}")), formal)]
        switches = [(f"And this one: \"{a}\"", b) for a, b in rng.sample([f for f in FORMAL if f[0] != informal], 4)]
        return fill(rng, turns, [], n, switches)
    if kind == 1:
        wrong, right, why = pick(rng, GRAMMAR)
        turns = [(pick(rng, (f"Is this sentence correct? \"{wrong}\"", f"Fix the grammar: {wrong}")), f"Corrected: \"{right}\"\n\n{why}")]
        switches = [(f"What about: \"{a}\"", f"It should be: \"{b}\" {c}") for a, b, c in rng.sample([g for g in GRAMMAR if g[0] != wrong], 4)]
        return fill(rng, turns, [], n, switches)
    recipient, reason, subject, body = pick(rng, EMAIL_REASONS)
    sender, day = pick(rng, NAMES), pick(rng, WEEKDAYS)
    body = body.format(colleague=pick(rng, NAMES), day=day)
    subject = subject.format(day=day)
    email = f"Subject: {subject}\n\nHi,\n\n{body}\n\nBest regards,\n{sender}"
    turns = [(f"Can you write a short email to {recipient} {reason}? My name is {sender}.", f"Here's a draft:\n\n{email}")]
    followups = [
        ("Can you make it a bit warmer?", f"Sure:\n\n{email.replace('Hi,', 'Hi there,').replace('Best regards,', 'Thanks so much, and have a lovely week!')}"),
        ("Is it okay to send it on a weekend?", "It's fine to write it at the weekend, but many email apps let you schedule sending for Monday morning, which is more considerate and more likely to be read."),
    ]
    return fill(rng, turns, followups, n)


# ---------------------------------------------------------------------------------------------
# Everyday wellbeing and productivity (general tips, not medical advice)

WELLBEING = [
    (
        "How can I sleep better?",
        [
            "Go to bed and get up at the same time every day, including weekends.",
            "Get some daylight in the morning; it helps set your body clock.",
            "Avoid caffeine after early afternoon.",
            "Keep your bedroom cool, dark and quiet.",
            "Put screens away for the last half hour before bed, or at least dim them.",
            "If you can't sleep after about twenty minutes, get up and do something calm until you feel sleepy.",
        ],
        "If poor sleep goes on for weeks or you snore heavily and feel exhausted during the day, it's worth talking to a doctor.",
    ),
    (
        "How do I stay focused when working from home?",
        [
            "Keep a dedicated workspace, even if it's just one end of the table.",
            "Plan the three most important tasks the evening before.",
            "Work in focused blocks of 25 to 50 minutes with short breaks in between.",
            "Turn off notifications and keep your phone in another room during focus blocks.",
            "Get dressed and take a short walk before you start, as a 'commute'.",
            "Agree on clear working hours with the people you live with.",
        ],
        "Be patient with yourself: focus is a skill, and a routine takes a few weeks to settle.",
    ),
    (
        "What are some good stretches for people who sit all day?",
        [
            "Neck rolls: slowly tilt your head ear to shoulder, five times each side.",
            "Chest opener: clasp your hands behind your back and gently lift them.",
            "Seated twist: sit tall and rotate your upper body to each side, holding for a few breaths.",
            "Hip flexor stretch: step one foot forward into a lunge and gently press your hips forward.",
            "Hamstring stretch: put one heel on a low step, keep your back straight, and lean forward from the hips.",
        ],
        "Stop if anything hurts, and try to stand up and move for a couple of minutes every half hour.",
    ),
    (
        "How can I build a new habit that actually sticks?",
        [
            "Start smaller than you think: two minutes of the habit is enough at first.",
            "Attach it to something you already do, for example 'after I pour my coffee, I write three lines in my journal'.",
            "Make it obvious: leave your running shoes by the door or the book on your pillow.",
            "Track it on a simple calendar and try not to break the chain twice in a row.",
            "Reward yourself right after doing it, even with something small.",
        ],
        "Missing one day doesn't matter much; what matters is getting back to it the next day.",
    ),
    (
        "How do I deal with stress before an exam?",
        [
            "Break revision into small, specific tasks and tick them off.",
            "Test yourself with past papers instead of only rereading notes.",
            "Keep sleeping properly: memory consolidates during sleep.",
            "Try slow breathing: in for four counts, out for six, for a couple of minutes.",
            "Move every day, even a short walk helps.",
            "Talk to someone about how you feel instead of keeping it in.",
        ],
        "Some nerves are normal and can even help you focus. If anxiety feels overwhelming, talk to a teacher, counsellor or doctor.",
    ),
]


def running_plan(weeks: int) -> str:
    lines = []
    for week in range(1, weeks + 1):
        progress = (week - 1) / max(1, weeks - 1)
        run = 1 + round(progress * 19)
        walk = max(0, 3 - round(progress * 3))
        reps = max(1, round(30 / (run + walk))) if walk else 1
        if walk:
            session = f"{reps} × ({run} min easy run + {walk} min walk)"
        else:
            session = f"{run + 10} min continuous easy run"
        lines.append(f"- **Week {week}:** three sessions of {session}, with a 5-minute brisk walk to warm up and cool down.")
    return "\n".join(lines)


WELLBEING_SYSTEM = (
    "You are a supportive wellbeing coach. Give practical, general tips and suggest seeing a professional when appropriate.",
)


def topic_wellbeing(rng: random.Random, n: int) -> list[Turn]:
    if rng.random() < 0.3:
        weeks = rng.randint(4, 9)
        turns = [
            (
                pick(rng, (f"I've never run before. Can you give me {'an' if weeks == 8 else 'a'} {weeks}-week beginner plan?", f"Couch to running plan, {weeks} weeks please.")),
                f"Here's a gentle {weeks}-week plan that alternates running and walking and builds up gradually:\n\n{running_plan(weeks)}\n\nRun at a pace where you could still talk. If a week feels too hard, repeat it before moving on.",
            )
        ]
        followups = [
            ("What shoes should I get?", "Go for comfortable running shoes that fit well, with about a thumb's width of space in front of your longest toe. A running shop can watch you run and suggest a pair, but there's no need for the most expensive model."),
            ("Should I stretch before running?", "A brisk walk and a few dynamic moves, like leg swings and gentle lunges, are a better warm-up than long static stretches. Save the longer stretches for after the run, when your muscles are warm."),
            ("What if my knees hurt?", "Some muscle soreness is normal at first, but pain in a joint is a signal to back off. Take a few extra rest days, run on softer surfaces, and keep your stride short. If the pain continues, see a doctor or physiotherapist."),
        ]
        return fill(rng, turns, followups, n)
    question, tips, note = pick(rng, WELLBEING)
    chosen = rng.sample(tips, min(len(tips), rng.randint(4, 6)))
    turns = [(question, f"{pick(rng, ('Here are a few things that help:', 'A few ideas that work for many people:', 'Some practical tips:'))}\n\n{bullets(chosen)}\n\n{note}")]
    switches = [
        (f"Thanks. Also, {q[0].lower()}{q[1:]}", f"{bullets(tips_[:4])}\n\n{note_}")
        for q, tips_, note_ in rng.sample([w for w in WELLBEING if w[0] != question], 3)
    ]
    return fill(rng, turns, [], n, switches)


# ---------------------------------------------------------------------------------------------
# Long conversations (a couple of thousand tokens each)

# Entities for a generated Python module: (class, plural, [(field, type, example)])
ENTITIES = [
    ("Book", "books", [("title", "str", '"The Quiet Harbour"'), ("author", "str", '"M. Okafor"'), ("pages", "int", "320"), ("year", "int", "2019"), ("available", "bool", "True")]),
    ("Member", "members", [("name", "str", '"Lena Fischer"'), ("email", "str", '"lena@example.org"'), ("joined_year", "int", "2021"), ("active", "bool", "True")]),
    ("Loan", "loans", [("book_id", "int", "7"), ("member_id", "int", "3"), ("days", "int", "14"), ("returned", "bool", "False")]),
    ("Product", "products", [("name", "str", '"Desk lamp"'), ("sku", "str", '"LMP-042"'), ("price", "float", "39.9"), ("stock", "int", "12")]),
    ("Customer", "customers", [("name", "str", '"Kofi Mensah"'), ("email", "str", '"kofi@example.com"'), ("city", "str", '"Accra"'), ("loyalty_points", "int", "150")]),
    ("Order", "orders", [("customer_id", "int", "5"), ("total", "float", "84.5"), ("items", "int", "3"), ("paid", "bool", "False")]),
    ("Course", "courses", [("title", "str", '"Intro to Statistics"'), ("teacher", "str", '"Dr. Rao"'), ("credits", "int", "6"), ("capacity", "int", "40")]),
    ("Student", "students", [("name", "str", '"Sami Haddad"'), ("email", "str", '"sami@uni.example"'), ("year", "int", "2"), ("grade_average", "float", "7.8")]),
    ("Room", "rooms", [("code", "str", '"B-204"'), ("floor", "int", "2"), ("seats", "int", "30"), ("has_projector", "bool", "True")]),
    ("Ticket", "tickets", [("title", "str", '"Printer jams on page two"'), ("assignee", "str", '"wen"'), ("priority", "int", "3"), ("closed", "bool", "False")]),
]


def snake(name: str) -> str:
    return "".join(f"_{c.lower()}" if c.isupper() and i else c.lower() for i, c in enumerate(name))


def entity_code(cls: str, plural: str, fields: list[tuple[str, str, str]]) -> str:
    var = snake(cls)
    lines = ["@dataclasses.dataclass", f"class {cls}:", f'    """One {var.replace("_", " ")} record."""', "", "    id: int"]
    lines += [f"    {name}: {typ}" for name, typ, _ in fields]
    lines += ["", "    def validate(self) -> None:"]
    for name, typ, _ in fields:
        if typ == "str":
            lines += [f"        if not self.{name}.strip():", f'            raise ValidationError("{name} must not be empty")']
            if name == "email":
                lines += [f'        if "@" not in self.{name}:', f'            raise ValidationError(f"not an email address: {{self.{name}!r}}")']
        elif typ in ("int", "float"):
            if name == "priority":
                lines += [f"        if not 1 <= self.{name} <= 5:", f'            raise ValidationError("{name} must be between 1 and 5")']
            else:
                lines += [f"        if self.{name} < 0:", f'            raise ValidationError("{name} must not be negative")']
    key = next(name for name, typ, _ in fields if typ in ("str", "int"))
    lines += [
        "",
        "",
        f"class {cls}Repository:",
        f'    """Keeps {plural} in memory, keyed by id."""',
        "",
        "    def __init__(self) -> None:",
        f"        self._{plural}: dict[int, {cls}] = {{}}",
        "",
        f"    def add(self, {var}: {cls}) -> {cls}:",
        f"        {var}.validate()",
        f"        if {var}.id in self._{plural}:",
        f'            raise KeyError(f"{var.replace("_", " ")} {{{var}.id}} already exists")',
        f"        self._{plural}[{var}.id] = {var}",
        f"        return {var}",
        "",
        f"    def get(self, {var}_id: int) -> {cls}:",
        "        try:",
        f"            return self._{plural}[{var}_id]",
        "        except KeyError:",
        f'            raise KeyError(f"no {var.replace("_", " ")} with id {{{var}_id}}") from None',
        "",
        f"    def update(self, {var}_id: int, **changes) -> {cls}:",
        f"        updated = dataclasses.replace(self.get({var}_id), **changes)",
        "        updated.validate()",
        f"        self._{plural}[{var}_id] = updated",
        "        return updated",
        "",
        f"    def remove(self, {var}_id: int) -> None:",
        f"        self.get({var}_id)",
        f"        del self._{plural}[{var}_id]",
        "",
        f"    def find_by_{key}(self, {key}) -> list[{cls}]:",
        f"        return [item for item in self._{plural}.values() if item.{key} == {key}]",
        "",
        f"    def __iter__(self) -> Iterator[{cls}]:",
        f"        return iter(sorted(self._{plural}.values(), key=lambda item: item.id))",
        "",
        "    def __len__(self) -> int:",
        f"        return len(self._{plural})",
    ]
    return "\n".join(lines)


def entity_test(cls: str, plural: str, fields: list[tuple[str, str, str]]) -> str:
    var = snake(cls)

    def call(**override: str) -> str:
        args = ", ".join(f"{name}={override.get(name, example)}" for name, _, example in fields)
        return f"{cls}(id=1, {args})"

    numeric = next((f[0] for f in fields if f[1] in ("int", "float") and f[0] != "priority"), None)
    text = next((f[0] for f in fields if f[1] == "str"), None)
    lines = [
        f"def test_{var}_repository_round_trip():",
        f"    repo = {cls}Repository()",
        f"    repo.add({call()})",
        "    assert len(repo) == 1",
    ]
    if numeric:
        lines += [f"    repo.update(1, {numeric}=99)", f"    assert repo.get(1).{numeric} == 99"]
    lines += ["    repo.remove(1)", "    assert len(repo) == 0"]
    bad = {text: '"   "'} if text else {numeric: "-1"}
    lines += [
        "",
        "",
        f"def test_{var}_rejects_invalid_fields():",
        f"    repo = {cls}Repository()",
        "    with pytest.raises(ValidationError):",
        f"        repo.add({call(**bad)})",
    ]
    return "\n".join(lines)


DOMAINS = (
    ("a small library", ["Book", "Member", "Loan", "Room"]),
    ("an online shop", ["Product", "Customer", "Order", "Ticket"]),
    ("a university timetable", ["Course", "Student", "Room"]),
    ("an IT help desk", ["Ticket", "Member", "Room", "Product"]),
)


def long_code_module(rng: random.Random) -> list[Turn]:
    domain, names = pick(rng, DOMAINS)
    entities = [e for name in names for e in ENTITIES if e[0] == name]
    header = dedent(f'''
        """Records for {domain}: dataclasses, validation and in-memory repositories."""

        from __future__ import annotations

        import dataclasses
        from collections.abc import Iterator


        class ValidationError(ValueError):
            """Raised when a record has an invalid field."""
    ''')
    module = header + "\n\n\n" + "\n\n\n".join(entity_code(*e) for e in entities) + "\n"
    tests = "import pytest\n\nfrom records import " + ", ".join(
        [n for e in entities for n in (e[0], f"{e[0]}Repository")] + ["ValidationError"]
    ) + "\n\n\n" + "\n\n\n".join(entity_test(*e) for e in entities) + "\n"
    ask = (
        f"I'm building a prototype for {domain}. Can you write a Python module with dataclasses for "
        f"{join_list([e[0] for e in entities])}, simple validation, and an in-memory repository for each "
        "with add/get/update/remove? Please include pytest tests too."
    )
    answer = (
        f"Here's a self-contained module. Each record is a dataclass with a `validate()` method, and each repository "
        f"keeps records in a dict keyed by id. Updates go through `dataclasses.replace`, so a failed validation never "
        f"leaves a half-updated record behind.\n\n```python\n# records.py\n{module}```\n\n"
        f"And the tests:\n\n```python\n# test_records.py\n{tests}```\n\n"
        "A few notes:\n\n"
        + bullets(
            [
                "The repositories raise `KeyError` with a readable message for unknown or duplicate ids, so callers can tell the two cases apart from the message.",
                "`__iter__` returns records sorted by id, which keeps output stable in tests and logs.",
                "When you move to a real database, keep the same method names and swap the dict for queries; the tests will then tell you whether the behaviour is unchanged.",
            ]
        )
    )
    turns = [(ask, answer)]
    turns.append(
        (
            "Should I use a single generic repository class instead of one per record type?",
            "You could, with `typing.Generic`: a `Repository[T]` that takes the record type in its constructor. It removes the repetition, "
            "but the per-type classes make room for queries that only make sense for one record type, like `find_by_email`. A common middle "
            "ground is a generic base class with the shared methods and small subclasses that add the specific queries.",
        )
    )
    return turns


# Code review: (name, code with a problem, explanation, fixed code)
REVIEW_ISSUES = [
    (
        "add_tag",
        '''
        def add_tag(tag, tags=[]):
            tags.append(tag)
            return tags
        ''',
        "The default list is created once, when the function is defined, and shared between calls, so tags from one call leak into the next.",
        '''
        def add_tag(tag, tags=None):
            tags = [] if tags is None else tags
            tags.append(tag)
            return tags
        ''',
    ),
    (
        "parse_port",
        '''
        def parse_port(value):
            try:
                return int(value)
            except:
                return 8080
        ''',
        "The bare `except:` swallows every error, including `KeyboardInterrupt`, and silently turns typos into the default port. Catch `ValueError` only, and check the range.",
        '''
        def parse_port(value: str) -> int:
            try:
                port = int(value)
            except ValueError:
                raise ValueError(f"not a port number: {value!r}") from None
            if not 0 < port < 65536:
                raise ValueError(f"port out of range: {port}")
            return port
        ''',
    ),
    (
        "count_lines",
        '''
        def count_lines(path):
            f = open(path)
            return len(f.readlines())
        ''',
        "The file is never closed, and `readlines()` loads the whole file into memory just to count it.",
        '''
        def count_lines(path):
            with open(path, encoding="utf-8") as handle:
                return sum(1 for _ in handle)
        ''',
    ),
    (
        "describe_user",
        '''
        def describe_user(user):
            if user == None:
                return "anonymous"
            return user.name
        ''',
        "Comparing with `== None` calls the object's `__eq__`, which a class can override; `is None` is the reliable check.",
        '''
        def describe_user(user):
            if user is None:
                return "anonymous"
            return user.name
        ''',
    ),
    (
        "build_report",
        '''
        def build_report(rows):
            report = ""
            for row in rows:
                report = report + str(row) + "\\n"
            return report
        ''',
        "Building a string with `+` in a loop can copy the whole string each time, which gets slow for many rows. `str.join` builds it once.",
        '''
        def build_report(rows):
            return "".join(f"{row}\\n" for row in rows)
        ''',
    ),
    (
        "remove_negatives",
        '''
        def remove_negatives(numbers):
            for n in numbers:
                if n < 0:
                    numbers.remove(n)
            return numbers
        ''',
        "Removing items from a list while looping over it skips elements: with `[-1, -2, 3]` the result is `[-2, 3]`. It also changes the caller's list.",
        '''
        def remove_negatives(numbers):
            return [n for n in numbers if n >= 0]
        ''',
    ),
    (
        "find_user",
        '''
        def find_user(cursor, name):
            cursor.execute("SELECT * FROM users WHERE name = '" + name + "'")
            return cursor.fetchone()
        ''',
        "Building SQL by string concatenation allows SQL injection: a name like `x' OR '1'='1` returns someone else's row. Use a parameterised query.",
        '''
        def find_user(cursor, name):
            cursor.execute("SELECT * FROM users WHERE name = ?", (name,))
            return cursor.fetchone()
        ''',
    ),
    (
        "total_length",
        '''
        def total_length(list):
            sum = 0
            for item in list:
                sum += len(item)
            return sum
        ''',
        "The names `list` and `sum` shadow built-ins, which breaks any later use of them in the function and confuses readers.",
        '''
        def total_length(items):
            return sum(len(item) for item in items)
        ''',
    ),
    (
        "is_admin",
        '''
        def is_admin(role):
            return role is "admin"
        ''',
        "`is` compares identity, not value. It may happen to work for short strings because of interning, but it is not guaranteed, and recent Python versions warn about it.",
        '''
        def is_admin(role):
            return role == "admin"
        ''',
    ),
    (
        "print_items",
        '''
        def print_items(items):
            for i in range(len(items)):
                print(i, items[i])
        ''',
        "`range(len(...))` works, but `enumerate` is clearer and also works with iterables that can't be indexed.",
        '''
        def print_items(items):
            for i, item in enumerate(items):
                print(i, item)
        ''',
    ),
    (
        "get_price",
        '''
        def get_price(prices, item):
            if item in prices.keys():
                return prices[item]
            else:
                return None
        ''',
        "This is what `dict.get` does in one call, and `.keys()` is not needed for a membership test.",
        '''
        def get_price(prices, item):
            return prices.get(item)
        ''',
    ),
    (
        "average",
        '''
        def average(values):
            return sum(values) / len(values)
        ''',
        "An empty list raises `ZeroDivisionError` with a message that doesn't say what went wrong. Decide what an empty input means and say so.",
        '''
        def average(values):
            if not values:
                raise ValueError("average of an empty sequence")
            return sum(values) / len(values)
        ''',
    ),
]


def long_code_review(rng: random.Random) -> list[Turn]:
    issues = rng.sample(REVIEW_ISSUES, rng.randint(8, 10))
    pasted = "\n\n".join(dedent(code) for _, code, _, _ in issues)
    ask = pick(
        rng,
        (
            "Can you review this utility module from our codebase? It works, but I have a feeling some of it is fragile.",
            "Please do a code review of the following Python file and point out anything you would change.",
        ),
    )
    ask = f"{ask}\n\n```python\n{pasted}\n```"
    parts = []
    for i, (name, _, why, fixed) in enumerate(issues, 1):
        parts.append(f"**{i}. `{name}`**: {why}\n\n```python\n{dedent(fixed)}\n```")
    answer = (
        "Thanks for sharing it. Most of these functions work on the happy path, but several have edge cases worth fixing. Going through them in order:\n\n"
        + "\n\n".join(parts)
        + "\n\nNone of these changes alter the behaviour for normal inputs, so they are safe to make one at a time. I'd add a small test for each edge case as you fix it."
    )
    fixed_file = "\n\n\n".join(dedent(fixed) for *_, fixed in issues)
    turns = [(ask, answer), ("Can you give me the whole file with all the fixes applied?", f"Here it is:\n\n```python\n{fixed_file}\n```")]
    first = issues[0]
    turns.append(
        (
            "Which of these would you fix first?",
            f"The ones that can silently give wrong results or leak data: "
            + join_list([f"`{name}`" for name, *_ in issues if name in ("find_user", "add_tag", "remove_negatives", "parse_port")] or [f"`{first[0]}`"])
            + ". The rest are about clarity and resources, so they can wait for the next time someone touches that code.",
        )
    )
    return turns


GENERIC_DAYS = (
    "Take a day trip out of the city by train; ask at the station or tourist office which nearby towns are easiest to reach.",
    "Keep this as a slow day: sleep in, find a café you like, and just walk around a neighbourhood you haven't seen yet.",
    "Book a cooking class or a food tour in the morning, then spend the afternoon at a park or garden.",
    "Spend the morning at a local market, buy picnic food, and find a quiet spot for lunch.",
    "Rent a bike or join a bike tour to cover more ground, then rest your legs at a museum in the afternoon.",
    "Use this day as a buffer for bad weather or anything you want to see again.",
)


def long_itinerary(rng: random.Random) -> list[Turn]:
    cities = rng.sample(CITIES, 3)
    plan_days = [rng.randint(4, 5) for _ in cities]
    total = sum(plan_days)
    sections = []
    for city, days in zip(cities, plan_days):
        sights = list(city["sights"])
        rng.shuffle(sights)
        spare_days = rng.sample(GENERIC_DAYS, len(GENERIC_DAYS))
        day_lines = []
        for day in range(1, days + 1):
            if day <= 3:
                s1, s2 = sights[2 * day - 2], sights[(2 * day - 1) % len(sights)]
                day_lines.append(
                    f"- **Day {day}:** In the morning, {pick(rng, MORNINGS).format(sight=s1)}. In the afternoon, "
                    f"{pick(rng, AFTERNOONS).format(sight=s2)}. In the evening, {pick(rng, EVENINGS).format(food=city['dinner'])}."
                )
            else:
                day_lines.append(f"- **Day {day}:** {spare_days[day - 4]}")
        sections.append(
            f"### {city['name']} ({days} days)\n\n" + "\n".join(day_lines) + f"\n\n*Getting around:* {city['transport']}\n\n"
            f"*Food to try:* {city['food']}."
            + ("" if city["language"].startswith("English") else f"\n\n*Useful word:* \"thank you\" is {city['thanks']}.")
        )
    ask = f"I have {total} days and want to visit {join_list([c['name'] for c in cities])}. Can you make me a detailed day-by-day itinerary with transport and food tips?"
    answer = (
        f"What a trip! Here's a {total}-day plan with a few buffer days, because moving between cities always takes longer than expected.\n\n"
        + "\n\n".join(sections)
        + "\n\n### Before you go\n\n"
        + bullets(rng.sample(TRAVEL_TIPS, 5))
        + "\n\nBook the travel between cities early: trains and flights get more expensive closer to the date."
    )
    turns = [(ask, answer)]
    turns.append(("I'm worried about jet lag at the start. Any advice?", JET_LAG))
    turns.append(("What should I pack for that kind of trip?", f"For a multi-city trip, pack light:\n\n{bullets(TRIP_PACKING['a winter city break'][:3] + TRIP_PACKING['a business trip'][1:2] + ['a small day bag for sightseeing', 'a reusable water bottle'])}"))
    return turns


def long_study_guide(rng: random.Random) -> list[Turn]:
    items = rng.sample(HISTORY, rng.randint(10, 12))
    items.sort(key=lambda it: HISTORY.index(it))
    sections = []
    for item in items:
        title = item["event"][0].upper() + item["event"][1:]
        sections.append(f"## {title}\n\n**When:** {item['when']}\n\n**What happened:** {item['what']}\n\n**Why it matters:** {item['why']}\n\n**Key people:** {item['who']}")
    quiz_items = rng.sample(items, 5)
    quiz = numbered([f"{it['ask']} *Answer: {it['when']}*" for it in quiz_items])
    ask = "I have a history exam next week. Can you write me a study guide covering " + join_list([it["event"] for it in items]) + "? Include why each one matters, and a short quiz at the end."
    answer = (
        "Here's a study guide with one section per topic. For each, learn the date first, then the story, then why it matters: examiners usually reward the last part most.\n\n"
        + "\n\n".join(sections)
        + "\n\n## Quick quiz\n\n"
        + quiz
        + "\n\nGood luck! Try answering the quiz from memory first, then check."
    )
    return [(ask, answer), ("How should I revise all of that in a week?", bullets([
        "Day 1-2: read the guide once, then write one-line summaries from memory.",
        "Day 3-4: turn each section into flashcards: date on one side, what and why on the other.",
        "Day 5: do the quiz and explain each event out loud to someone, or to yourself.",
        "Day 6: focus on the topics you got wrong.",
        "Day 7: light review only, and a good night's sleep.",
    ]))]


def long_meal_plan(rng: random.Random) -> list[Turn]:
    dinners = rng.sample([d for d in DISHES if d["minutes"] >= 20 and d["name"] not in ("guacamole", "roasted chickpeas")], 5)
    breakfasts = [d for d in DISHES if d["name"] in ("overnight oats", "fluffy pancakes", "banana bread")]
    people = pick(rng, (2, 3, 4))
    days = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday")
    sections = []
    for day, dish in zip(days, dinners):
        breakfast = pick(rng, breakfasts)["name"]
        sections.append(f"### {day}\n\n*Breakfast:* {breakfast}\n\n*Dinner:* {dish['name']} ({dish['minutes']} minutes)\n\n{recipe_text(dish, people)}\n\n*Serve with:* {dish['serve']}")
    shopping = sorted({ing[2].split(",")[0].split(" (")[0] for dish in dinners for ing in dish["ingredients"] if ing[0] is not None})
    ask = f"Can you make me a meal plan for the working week, dinners for {people} people, with full recipes and a shopping list? Nothing too complicated please."
    answer = (
        f"Here's a simple five-day plan. Dinners are scaled for {people} people, and breakfasts can be made ahead.\n\n"
        + "\n\n".join(sections)
        + "\n\n### Shopping list\n\n"
        + bullets(shopping)
        + "\n\nCheck your cupboard for oil, salt, pepper and spices before you shop."
    )
    turns = [(ask, answer)]
    turns.append(("Which of these can I cook ahead on Sunday?", "Anything that keeps well in the fridge: " + " ".join(f"{d['name'].capitalize()}: {d['keeps']}" for d in dinners[:3])))
    return turns


def long_science_sheet(rng: random.Random) -> list[Turn]:
    items = rng.sample(SCIENCE, rng.randint(9, 11))
    sections = [f"### {q}\n\n{a}\n\n*For younger members:* {simple}" for q, a, simple in items]
    ask = "I run a science club for kids aged 9 to 12. Can you write a handout that answers these questions, with a simpler version of each answer? " + " ".join(q for q, _, _ in items)
    answer = "Here's a handout with a fuller answer for the older kids and a one-line version for the younger ones.\n\n" + "\n\n".join(sections) + "\n\nA good way to use it: read the simple version aloud, then let the kids ask questions before reading the fuller one."
    return [(ask, answer), ("Can you suggest an activity to go with the ice question?", "Freeze a plastic bottle filled to the brim with water (with the cap off, inside a bag) and look at it the next day: the ice bulges over the top because it takes up more space than the water did. Then drop ice cubes into a glass of water and into a glass of cooking oil and compare where they float.")]


def long_mixed(rng: random.Random) -> list[Turn]:
    """One long multi-turn chat that wanders between topics, each answer in full."""
    topics = [topic_cooking, topic_travel, topic_programming, topic_math, topic_history, topic_science, topic_wellbeing]
    turns: list[Turn] = []
    for topic in rng.sample(topics, 5):
        turns.extend(topic(rng, 2))
    return turns


LONG_BUILDERS = (long_code_module, long_code_review, long_itinerary, long_study_guide, long_meal_plan, long_science_sheet, long_mixed)


# ---------------------------------------------------------------------------------------------
# Assembling conversations

GENERAL_SYSTEM = (
    "You are a helpful assistant.",
    "You are a friendly, concise assistant. Answer in plain language.",
    "You are a helpful assistant. If you are not sure about something, say so.",
)

# (topic, weight, system prompts)
TOPICS = (
    (topic_cooking, 14, COOKING_SYSTEM),
    (topic_travel, 12, TRAVEL_SYSTEM),
    (topic_language, 6, GENERAL_SYSTEM),
    (topic_programming, 16, CODE_SYSTEM),
    (topic_math, 14, MATH_SYSTEM),
    (topic_history, 10, HISTORY_SYSTEM),
    (topic_science, 10, SCIENCE_SYSTEM),
    (topic_support, 10, SUPPORT_SYSTEM),
    (topic_writing, 8, WRITING_SYSTEM),
    (topic_wellbeing, 6, WELLBEING_SYSTEM),
)
LONG_SYSTEM = {long_code_module: CODE_SYSTEM, long_code_review: CODE_SYSTEM, long_itinerary: TRAVEL_SYSTEM, long_study_guide: HISTORY_SYSTEM, long_meal_plan: COOKING_SYSTEM, long_science_sheet: SCIENCE_SYSTEM}


def to_record(index: str, system: str | None, turns: list[Turn], shape: str) -> dict:
    """One JSONL record in one of the three input shapes the reader accepts."""
    messages = ([("system", system)] if system else []) + [m for u, a in turns for m in (("user", u), ("assistant", a))]
    if shape == "sharegpt":
        names = {"system": "system", "user": "human", "assistant": "gpt"}
        return {"id": index, "conversations": [{"from": names[role], "value": text} for role, text in messages]}
    return {"id": index, shape: [{"role": role, "content": text} for role, text in messages]}


def generate_conversations(rng: random.Random, count: int, long_count: int, prefix: str) -> list[dict]:
    """``count`` records; ``long_count`` of them long, the rest mostly short and many multi-turn."""
    long_builders = list(LONG_BUILDERS)
    rng.shuffle(long_builders)
    long_at = dict(zip(sorted(rng.sample(range(count), long_count)), long_builders * long_count))
    with_system = set(rng.sample(range(count), round(count * 0.2)))
    shapes = ["conversation"] * (count // 2) + ["messages"] * (count // 4)
    shapes += ["sharegpt"] * (count - len(shapes))
    rng.shuffle(shapes)
    weights = [w for _, w, _ in TOPICS]
    records = []
    for i in range(count):
        if i in long_at:
            builder = long_at[i]
            turns = builder(rng)
            systems = LONG_SYSTEM.get(builder, GENERAL_SYSTEM)
        else:
            topic, _, systems = rng.choices(TOPICS, weights=weights)[0]
            n = 1 if rng.random() < 0.6 else rng.randint(2, 6)
            turns = topic(rng, n)
        system = pick(rng, systems + GENERAL_SYSTEM) if i in with_system else None
        records.append(to_record(f"{prefix}-{i:04d}", system, turns, shapes[i]))
    return records


def record_messages(record: dict) -> list[dict]:
    """Normalise any of the three shapes to role/content messages (used to train the tokenizer)."""
    if "conversations" in record:
        roles = {"system": "system", "human": "user", "gpt": "assistant"}
        return [{"role": roles[m["from"]], "content": m["value"]} for m in record["conversations"]]
    return record.get("conversation") or record["messages"]


def render_chatml(messages: list[dict]) -> str:
    """What CHAT_TEMPLATE renders, without jinja (the test checks the two agree)."""
    return "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages)


def write_jsonl(path: Path, records: list[dict]) -> None:
    with path.open("w", encoding="utf-8", newline="\n") as handle:
        for record in records:
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")


# ---------------------------------------------------------------------------------------------
# The demo tokenizer


def train_tokenizer(texts: list[str], out_dir: Path) -> None:
    """Train a byte-level BPE on ``texts`` and save it as a transformers tokenizer folder."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        min_frequency=2,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer, length=len(texts))
    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token=None,
        eos_token="<|im_end|>",
        pad_token="<|pad|>",
        model_max_length=MODEL_MAX_LENGTH,
        clean_up_tokenization_spaces=False,
    )
    wrapped.chat_template = CHAT_TEMPLATE
    wrapped.save_pretrained(str(out_dir))
    # transformers 5 records its own class name, "TokenizersBackend", which transformers 4.x cannot
    # resolve; "PreTrainedTokenizerFast" names the same class in 5.x and loads in 4.x too.
    config_path = out_dir / "tokenizer_config.json"
    config = json.loads(config_path.read_text(encoding="utf-8"))
    config["tokenizer_class"] = "PreTrainedTokenizerFast"
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True, ensure_ascii=False) + "\n", encoding="utf-8")


# ---------------------------------------------------------------------------------------------


def build(out_dir: Path | str | None = None) -> dict[str, Path]:
    """Write ``conversations/`` and ``tokenizer/`` under ``out_dir`` (default: ``collate_assets/sample/``).

    Returns the paths written, relative names to absolute paths.
    """
    out = Path(out_dir) if out_dir is not None else SAMPLE_DIR
    conv_dir = out / "conversations"
    tok_dir = out / "tokenizer"
    conv_dir.mkdir(parents=True, exist_ok=True)
    if tok_dir.exists():
        shutil.rmtree(tok_dir)
    tok_dir.mkdir(parents=True)

    main = generate_conversations(random.Random(SEED), MAIN_COUNT, MAIN_LONG, "demo")
    small = generate_conversations(random.Random(SEED + 1), SMALL_COUNT, SMALL_LONG, "small")
    write_jsonl(conv_dir / "demo.jsonl", main)
    write_jsonl(conv_dir / "demo_small.jsonl", small)

    texts = [render_chatml(record_messages(r)) for r in main + small]
    train_tokenizer(texts, tok_dir)

    written = [conv_dir / "demo.jsonl", conv_dir / "demo_small.jsonl"] + sorted(tok_dir.iterdir())
    return {p.relative_to(out).as_posix(): p for p in written}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None, help="folder to build into (default: collate_assets/sample/ of this checkout)")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    for name, path in build(args.out).items():
        print(f"{path.stat().st_size:>9,}  {name}")


if __name__ == "__main__":
    main()
