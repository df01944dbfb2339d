"""The review order: photos whose boxes are most in doubt first, spread over the classes; review.txt
lists every labelled photo exactly once."""

from cam.review import doubt, review_order


def _record(file, scores, boxes=((0, 0, 10, 10),), labels=("apple", "banana")):
    return {"file": file, "predictions": [{"label": label, "score": score, "boxes": [list(b) for b in boxes]}
                                          for label, score in zip(labels, scores)]}


def test_a_box_inside_another_of_its_class_is_most_in_doubt():
    sure = _record("sure.jpg", [0.9, 0.05])
    part = _record("part.jpg", [0.9, 0.05], boxes=[(0, 0, 100, 100), (10, 10, 40, 40)])
    beside = _record("beside.jpg", [0.9, 0.05], boxes=[(0, 0, 40, 40), (50, 50, 90, 90)])
    hesitant = _record("hesitant.jpg", [0.5, 0.45])
    assert doubt(part) > doubt(hesitant) > doubt(sure) == doubt(beside)
    assert doubt({"file": "empty.jpg", "predictions": []}) > doubt(part)
    assert review_order([sure, beside, hesitant, part]) == ["part.jpg", "hesitant.jpg", "sure.jpg", "beside.jpg"]


def test_the_order_takes_each_class_in_turn():
    apples = [_record(f"a{i}.jpg", [0.9 - i / 10, 0.05]) for i in range(3)]
    bananas = [_record(f"b{i}.jpg", [0.95, 0.01], labels=("banana", "apple")) for i in range(2)]
    order = review_order(apples + bananas)
    assert order == ["a2.jpg", "b0.jpg", "a1.jpg", "b1.jpg", "a0.jpg"]
    assert sorted(order) == sorted(r["file"] for r in apples + bananas)
