"""A small built-in canvas: what the CLI shows without input and the WebUI editor starts from."""

from __future__ import annotations

from lib_omost.canvas.model import Canvas, GlobalRegion, located_region


def example_canvas() -> Canvas:
    """A cat and a dog on a sofa by a window: a global region and four regions at three depths."""
    return Canvas(
        global_region=GlobalRegion(
            description="A cat and a dog resting on a sofa in a sunlit living room.",
            detailed_descriptions=[
                "A cozy living room in the afternoon, warm light falling through a tall window.",
                "A ginger cat and a golden retriever share a green sofa, both relaxed and content.",
            ],
            tags="living room, sofa, cat, dog, window, afternoon light, cozy, warm",
            color="wheat",
        ),
        regions=[
            located_region(
                "on the top-right", "no offset", "a small vertical area", 8.0,
                description="A tall window with sheer curtains.",
                detailed_descriptions=["Sunlight streams through sheer white curtains, a tree visible outside."],
                tags="window, curtains, sunlight, tree",
                atmosphere="Bright and airy.", style="Soft natural light.",
                quality_meta="Detailed fabric texture.", color="lightskyblue"),
            located_region(
                "on the bottom", "no offset", "a large horizontal area", 5.0,
                description="A green velvet sofa.",
                detailed_descriptions=["A wide three-seat sofa in green velvet with two cushions."],
                tags="sofa, velvet, green, cushions",
                atmosphere="Comfortable and inviting.", style="Realistic interior photography.",
                quality_meta="Sharp focus, rich texture.", color="darkolivegreen"),
            located_region(
                "on the left", "slightly to the lower", "a small square area", 2.0,
                description="A ginger cat curled up.",
                detailed_descriptions=["An orange tabby cat curled up on the left cushion, eyes half closed."],
                tags="cat, ginger, tabby, sleepy",
                atmosphere="Calm and sleepy.", style="Realistic, soft fur.",
                quality_meta="High detail fur.", color="darkorange"),
            located_region(
                "on the right", "slightly to the lower", "a small square area", 2.0,
                description="A golden retriever lying down.",
                detailed_descriptions=["A golden retriever lies on the right cushion, head on its paws."],
                tags="dog, golden retriever, lying, friendly",
                atmosphere="Gentle and relaxed.", style="Realistic, soft fur.",
                quality_meta="High detail fur.", color="goldenrod"),
        ],
    )
