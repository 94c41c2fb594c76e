"""Problem Statement:
Is the bracket string `brackets`, made of (), [] and {}, balanced, i.e. does every opening bracket
have a matching closing bracket in the right order?

Input Output Description:
Input:
    brackets (str): at most 16 characters from "()[]{}".
Output:
    return (bool): true when the string is balanced.
"""
import random


def main_solution(brackets):
    pairs = {")": "(", "]": "[", "}": "{"}
    stack = []
    for char in brackets:
        if char in "([{":
            stack.append(char)
        elif not stack or stack.pop() != pairs[char]:
            return False
    return not stack


def input_generator():
    if random.random() < 0.5:
        text = ""
        for _ in range(random.randint(1, 4)):
            left, right = random.choice(["()", "[]", "{}"])
            text = random.choice([left + text + right, text + left + right])
        return {"brackets": text}
    return {"brackets": "".join(random.choice("()[]{}") for _ in range(random.randint(1, 12)))}
