"""Problem Statement:
Each letter of the message `message` is shifted forward in the alphabet by `shift` places, wrapping
from z to a; other characters are kept. What is the encrypted message?

Input Output Description:
Input:
    message (str): lowercase words and spaces, at most 40 characters.
    shift (int): 0 <= shift <= 25.
Output:
    return (str): the encrypted message.
"""
import random


def main_solution(message, shift):
    out = []
    for char in message:
        if char.isalpha():
            out.append(chr((ord(char) - ord("a") + shift) % 26 + ord("a")))
        else:
            out.append(char)
    return "".join(out)


def input_generator():
    words = ["attack", "at", "dawn", "hello", "world", "zebra", "code"]
    return {"message": " ".join(random.choice(words) for _ in range(random.randint(1, 5))),
            "shift": random.randint(0, 25)}
