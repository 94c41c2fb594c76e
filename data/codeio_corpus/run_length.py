"""Problem Statement:
A text is compressed by replacing each run of equal letters with the letter followed by the run
length. What is the compressed form of `text`?

Input Output Description:
Input:
    text (str): lowercase letters a-c, at most 30 characters.
Output:
    return (str): e.g. "a3b1c2" for "aaabcc"; an empty text gives "".
"""
import random


def main_solution(text):
    pieces = []
    index = 0
    while index < len(text):
        end = index
        while end < len(text) and text[end] == text[index]:
            end += 1
        pieces.append(f"{text[index]}{end - index}")
        index = end
    return "".join(pieces)


def input_generator():
    return {"text": "".join(random.choice("abc") for _ in range(random.randint(0, 30)))}
