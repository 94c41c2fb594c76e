"""Problem Statement:
Given two positive integers `a` and `b`, what are their greatest common divisor and least common
multiple?

Input Output Description:
Input:
    a (int): a positive integer below 10000.
    b (int): a positive integer below 10000.
Output:
    return (dict): {"gcd": int, "lcm": int}.
"""
import random


def main_solution(a, b):
    x, y = a, b
    while y:
        x, y = y, x % y
    return {"gcd": x, "lcm": a * b // x}


def input_generator():
    return {"a": random.randint(1, 9999), "b": random.randint(1, 9999)}
