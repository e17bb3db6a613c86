"""MBPP prompt formats (byte-exact against the harnesses' layouts) and code extraction from completions."""

from __future__ import annotations

import pytest

from sparsealign.data.mbpp.prompts import BIGCODE_STOPS, LM_EVAL_STOPS, make_format
from sparsealign.data.mbpp.tasks import load_mbpp
from sparsealign.evaluate.mbpp.extract import extract_code, truncate_at_stop


@pytest.fixture(scope="module")
def tasks(data_dir):
    return {t.task_id: t for t in load_mbpp(data_dir / "mbpp" / "mbpp.jsonl")}


def test_lm_eval_prompt_layout_for_task_11(tasks) -> None:
    prompt = make_format("lm-eval", tasks.values()).prompt(tasks[11])
    # lm-eval's mbpp task: 3 shots (tasks 2, 3, 4) as doc_to_text + code + "\n[DONE]", joined by "\n\n"
    shot2 = (
        "You are an expert Python programmer, and here is your task: Write a function to find the similar elements "
        "from the given two tuple lists. Your code should pass these tests:\n\n"
        "assert similar_elements((3, 4, 5, 6),(5, 7, 4, 10)) == (4, 5)\n"
        "assert similar_elements((1, 2, 3, 4),(5, 4, 3, 7)) == (3, 4)\n"
        "assert similar_elements((11, 12, 14, 13),(17, 15, 14, 13)) == (13, 14)\n"
        "[BEGIN]\n"
        "def similar_elements(test_tup1, test_tup2):\r\n  res = tuple(set(test_tup1) & set(test_tup2))\r\n"
        "  return (res) \n[DONE]"
    )
    query = (
        "You are an expert Python programmer, and here is your task: Write a python function to remove first and "
        "last occurrence of a given character from the string. Your code should pass these tests:\n\n"
        'assert remove_Occ("hello","l") == "heo"\nassert remove_Occ("abcda","a") == "bcd"\n'
        'assert remove_Occ("PHP","P") == "H"\n[BEGIN]\n'
    )
    assert prompt.startswith(shot2 + "\n\nYou are an expert Python programmer, and here is your task: Write a python "
                             "function to identify non-prime numbers.")
    assert prompt.endswith("\n[DONE]\n\n" + query)
    assert prompt.count("[BEGIN]") == 4 and prompt.count("[DONE]") == 3
    assert "import heapq as hq\r\ndef heap_queue_largest(nums,n):" in prompt  # shot 3 kept byte-exact
    assert make_format("lm-eval", tasks.values()).stop_sequences == LM_EVAL_STOPS == ("[DONE]",)


def test_bigcode_prompt_and_solution(tasks) -> None:
    fmt = make_format("bigcode")
    prompt = fmt.prompt(tasks[11])
    assert prompt == ('"""\nWrite a python function to remove first and last occurrence of a given character from '
                      'the string.\nassert remove_Occ("hello","l") == "heo"\n"""\n')
    assert fmt.solution(tasks[11], "def f(): pass\n") == prompt + "def f(): pass\n"
    assert "\nassert" in fmt.stop_sequences and "\nif" in fmt.stop_sequences


def test_lm_eval_format_needs_its_shots() -> None:
    with pytest.raises(ValueError, match="tasks"):
        make_format("lm-eval", [])
    with pytest.raises(ValueError, match="unknown"):
        make_format("humaneval")


@pytest.mark.parametrize(
    ("completion", "stops", "expected"),
    [
        # lm-eval: cut at [DONE], keep CRLF code
        ("def f(x):\r\n    return x\r\n[DONE]\n\nYou are an expert", LM_EVAL_STOPS, "def f(x):\r\n    return x\n"),
        # fenced block in chatty text
        ("Sure!\n```python\nimport math\ndef g(n):\n    return math.sqrt(n)\n```\nHope it helps", (),
         "import math\ndef g(n):\n    return math.sqrt(n)\n"),
        # an unclosed fence (generation ran out) still yields the code
        ("```py\ndef h():\n    return 1\n", (), "def h():\n    return 1\n"),
        # the model's own tests and prints are dropped; assignments and classes stay
        ("X = 3\nclass A:\n    pass\ndef k():\n    return X\nprint(k())\nassert k() == 3\n", (),
         "X = 3\nclass A:\n    pass\ndef k():\n    return X\n"),
        # a main guard is dropped
        ('def m():\n    return 2\nif __name__ == "__main__":\n    m()\n', (), "def m():\n    return 2\n"),
        # bigcode stops: a new top-level assert / if ends the function
        ("def f(a):\n    if a:\n        return 1\n    return 0\nassert f(1) == 1\n", BIGCODE_STOPS,
         "def f(a):\n    if a:\n        return 1\n    return 0\n"),
        # trailing garbage after valid code is cut at the longest parsable prefix
        ("def f():\n    return 1\nthis is not python (\n", (), "def f():\n    return 1\n"),
        # a repeated [BEGIN] marker is dropped
        ("[BEGIN]\ndef f():\n    return 1\n[DONE]", LM_EVAL_STOPS, "def f():\n    return 1\n"),
    ],
)
def test_extract_code(completion: str, stops: tuple[str, ...], expected: str) -> None:
    assert extract_code(completion, stops) == expected


def test_extract_keeps_unparsable_code_for_the_error_report() -> None:
    broken = "def f(x):\n    return x +"
    assert extract_code(broken) == broken
    assert extract_code("") == ""
    assert truncate_at_stop("a\nassert b\nif c", BIGCODE_STOPS) == "a"
