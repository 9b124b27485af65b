"""System prompts: the Omost form (for the fine-tuned models) and a longer one for generic instruction models.

The Omost models were fine-tuned on a system prompt of one sentence followed by a fenced python block with the
`Canvas` class: the two typed methods (bodies `pass`) and the assert lines that list the allowed values.
`omost_system_prompt()` keeps exactly that form (in our own wording); `generic_system_prompt()` adds the
semantics and one worked example for models that were not trained on it.
"""

from __future__ import annotations

import os

# The allowed values are the canvas module's (one source of truth); its dicts keep the order the models saw.
from lib_omost.canvas.geometry import AREAS, LOCATIONS, OFFSETS

PROMPT_KINDS = ("omost", "generic")


def _list_literal(values) -> str:
    return "[" + ", ".join(f'"{v}"' for v in values) + "]"


def canvas_class_code() -> str:
    """The `Canvas` class as the fine-tuned models saw it: typed signatures, allowed values, bodies `pass`."""
    return (
        "class Canvas:\n"
        "    def set_global_description(self, description: str, detailed_descriptions: list[str], "
        "tags: str, HTML_web_color_name: str):\n"
        "        pass\n"
        "\n"
        "    def add_local_description(self, location: str, offset: str, area: str, "
        "distance_to_viewer: float, description: str, detailed_descriptions: list[str], tags: str, "
        "atmosphere: str, style: str, quality_meta: str, HTML_web_color_name: str):\n"
        f"        assert location in {_list_literal(LOCATIONS)}\n"
        f"        assert offset in {_list_literal(OFFSETS)}\n"
        f"        assert area in {_list_literal(AREAS)}\n"
        "        assert distance_to_viewer > 0\n"
        "        pass\n"
    )


def omost_system_prompt() -> str:
    """One sentence, then the class in a fenced python block (the form the Omost models were trained on)."""
    return ("You are an AI assistant that composes images with the Python class `Canvas` given below:\n\n"
            "```python\n" + canvas_class_code() + "```")


GENERIC_EXAMPLE_REQUEST = "a red fox resting in a snowy forest at sunrise"

GENERIC_EXAMPLE_ANSWER = '''```python
# The picture as a whole
canvas = Canvas()
canvas.set_global_description(
    description='A red fox resting in a snowy forest at sunrise.',
    detailed_descriptions=[
        'A red fox lies curled up on fresh snow between tall pine trees.',
        'The low sun rises behind the trees in the upper right and lights the snow with warm colours.',
        'The forest fades into a soft morning haze in the distance.',
    ],
    tags='fox, red fox, snow, winter, forest, pine trees, sunrise, morning light, haze, calm, wildlife',
    HTML_web_color_name='lightsteelblue',
)

# The farthest object first: the rising sun
canvas.add_local_description(
    location='on the top-right',
    offset='no offset',
    area='a small square area',
    distance_to_viewer=20.0,
    description='The rising sun.',
    detailed_descriptions=['A pale golden sun just above the tree tops, glowing through the haze.'],
    tags='sun, sunrise, glow, golden light',
    atmosphere='Quiet and fresh, the first light of the day.',
    style='Soft, luminous, slightly hazy.',
    quality_meta='Smooth gradients, natural light.',
    HTML_web_color_name='gold',
)

# A row of pine trees behind the fox
canvas.add_local_description(
    location='on the top',
    offset='no offset',
    area='a large horizontal area',
    distance_to_viewer=10.0,
    description='Snow-covered pine trees.',
    detailed_descriptions=[
        'Dark green pines with snow on their branches stand in a loose row.',
        'Their trunks cast long blue shadows on the snow.',
    ],
    tags='pine trees, snow, forest, shadows',
    atmosphere='Still and cold.',
    style='Detailed natural scenery.',
    quality_meta='Sharp branches, crisp snow texture.',
    HTML_web_color_name='darkslategray',
)

# The main subject, nearest to the viewer
canvas.add_local_description(
    location='in the center',
    offset='slightly to the lower',
    area='a medium-sized horizontal area',
    distance_to_viewer=3.0,
    description='A red fox curled up on the snow.',
    detailed_descriptions=[
        'The fox rests with its bushy tail wrapped around its body and its eyes half closed.',
        'Its orange fur glows in the warm sunlight, with white fur on its chest and the tip of its tail.',
    ],
    tags='red fox, fur, bushy tail, resting, wildlife',
    atmosphere='Peaceful and warm despite the cold.',
    style='Realistic wildlife photography.',
    quality_meta='High detail fur, sharp focus on the face.',
    HTML_web_color_name='darkorange',
)
```'''


def generic_system_prompt() -> str:
    """A longer prompt for instruction models not fine-tuned on Omost: the rules, the class, one example."""
    return (
        "You are an AI assistant that composes images by writing a short Python program with the class "
        "`Canvas` given below. The program is never executed: it is read by a strict parser, so follow the "
        "rules exactly.\n\n"
        "```python\n" + canvas_class_code() + "```\n\n"
        "Rules:\n"
        "1. Reply with exactly one fenced ```python code block and nothing else.\n"
        "2. The block starts with `canvas = Canvas()`, calls `canvas.set_global_description(...)` once for the "
        "whole picture, then `canvas.add_local_description(...)` once per object or area of the picture.\n"
        "3. Pass every argument by keyword, as a literal: strings, numbers, and lists of strings. Do not use "
        "variables, loops, functions, imports or any other code. Comment lines starting with # are allowed.\n"
        "4. The canvas is a 90 x 90 grid. `location` puts the centre of the box (e.g. \"on the left\" is x = 15, "
        "y = 45), `offset` moves it by 10 units, `area` gives its size (small 50 x 50 up to large horizontal "
        "90 x 60). Use only the values listed in the assert lines above.\n"
        "5. `distance_to_viewer` is a positive number: larger means farther away. Far objects are painted "
        "first and near objects on top of them.\n"
        "6. `description` is one short sentence; `detailed_descriptions` are a few sentences about details; "
        "`tags` is a comma-separated list of keywords; `atmosphere`, `style` and `quality_meta` are short "
        "sentences; `HTML_web_color_name` is the one HTML colour name (like \"darkorange\" or \"lightsteelblue\") "
        "that best matches the main colour of that part of the picture.\n"
        "7. When the user asks for a change to an earlier picture, write the whole program again with the "
        "change applied, keeping everything else as it was.\n\n"
        f"Example. The user asks for \"{GENERIC_EXAMPLE_REQUEST}\" and you answer:\n\n"
        + GENERIC_EXAMPLE_ANSWER
    )


def system_prompt(kind: str = "omost", text: str | None = None, path: str | os.PathLike | None = None) -> str:
    """The system prompt to use: the user's text, else the user's file, else the built-in prompt `kind`."""
    if text is not None and path is not None:
        raise ValueError("give the system prompt as text or as a file, not both")
    if text is not None:
        if not text.strip():
            raise ValueError("the system prompt text is empty")
        return text
    if path is not None:
        try:
            with open(path, encoding="utf-8") as f:
                content = f.read()
        except OSError as exc:
            raise ValueError(f"cannot read the system prompt file {os.fspath(path)!r}: {exc.strerror}") from exc
        if not content.strip():
            raise ValueError(f"the system prompt file {os.fspath(path)!r} is empty")
        return content
    if kind == "omost":
        return omost_system_prompt()
    if kind == "generic":
        return generic_system_prompt()
    raise ValueError(f"unknown system prompt kind {kind!r}; expected one of {PROMPT_KINDS}")
