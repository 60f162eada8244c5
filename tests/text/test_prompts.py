import pytest

from megatron_moviegen.text.prompts import add_fps_prefix, byt5_text, conditioning_prompt, extract_quoted_text


@pytest.mark.parametrize(
    "prompt, expected",
    [
        ("a red car on the street", []),
        ('a sign that says "OPEN"', ["OPEN"]),
        ('"HELLO" and "WORLD" and "42!"', ["HELLO", "WORLD", "42!"]),
        ("a neon sign “Café Luna” at night", ["Café Luna"]),
        ('mixed “curly” and "straight"', ["curly", "straight"]),
        ('empty "" quotes and “” too', []),
        ('an unclosed "quote never ends', []),
        ("Joe's diner, 'single' quotes and don’t are not quotes", []),
        ('apostrophe inside "JOE\'S DINER"', ["JOE'S DINER"]),
        ('spaces kept "  A B  "', ["  A B  "]),
    ],
)
def test_extract_quoted_text(prompt, expected):
    assert extract_quoted_text(prompt) == expected


def test_byt5_text_requotes_each_substring_and_is_empty_without_quotes():
    assert byt5_text('say "HI" and “BYE”') == '"HI" "BYE"'
    assert byt5_text("no visual text") == ""


def test_add_fps_prefix_format():
    assert add_fps_prefix("a cat", 16) == "FPS-16 a cat"
    assert add_fps_prefix("", 24) == "FPS-24 "


@pytest.mark.parametrize("fps", [0, -4, 16.0, True, "16"])
def test_add_fps_prefix_rejects_non_positive_int(fps):
    with pytest.raises(ValueError, match="fps"):
        add_fps_prefix("a cat", fps)


def test_add_fps_prefix_refuses_a_second_prefix():
    with pytest.raises(ValueError, match="already"):
        add_fps_prefix("FPS-16 a cat", 24)


def test_fps_prefix_never_reaches_byt5():
    prompt = 'a sign that says "OPEN"'
    assert byt5_text(add_fps_prefix(prompt, 16)) == byt5_text(prompt) == '"OPEN"'


def test_conditioning_prompt_prefixes_videos_with_their_rounded_fps_and_leaves_images_alone():
    assert conditioning_prompt("a cat", 23.976) == "FPS-24 a cat"
    assert conditioning_prompt("a cat", 16) == "FPS-16 a cat"
    assert conditioning_prompt("a cat", None) == "a cat"
