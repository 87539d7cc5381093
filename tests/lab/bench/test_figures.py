"""``sinkwatch bench engine --plot`` draws the measured rounds as a PNG."""

from PIL import Image

from lab.bench.figures import plot_engine


def test_the_engine_figure_is_a_png_of_both_panels(tmp_path):
    samples = {"off@1": [10.0, 11.0], "on@1": [9.0, 9.5], "off@4": [30.0, 32.0], "on@4": [28.0, 29.0]}
    path = plot_engine(samples, [1, 4], tmp_path / "figures" / "engine.png")
    with Image.open(path) as image:
        assert image.format == "PNG"
        width, height = image.size
    assert width > 2 * height > 0
