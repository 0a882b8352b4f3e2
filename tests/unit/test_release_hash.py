"""A release's problem identity: the question's wording may vary in case and punctuation, the gold may not."""

from tracefactory.publish.release import problem_hash


def test_problem_identity_ignores_question_formatting_but_not_the_golds_signs_or_digits():
    assert problem_hash("Jo has 3 pens. How many?", "1 / 2") == problem_hash("jo has 3 pens -- how many", "1/2")
    assert problem_hash("Q?", "-3") != problem_hash("Q?", "3")
    assert problem_hash("Q?", "1/2") != problem_hash("Q?", "12")
    assert problem_hash("Q?", "3") != problem_hash("Another question?", "3")
