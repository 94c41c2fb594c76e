"""Problem Statement:
The Fibonacci sequence starts F(0) = 0, F(1) = 1. What is F(`index`) modulo `modulus`?

Input Output Description:
Input:
    index (int): 0 <= index <= 5000.
    modulus (int): 2 <= modulus <= 1000.
Output:
    return (int): F(index) mod modulus.
"""
import random


def main_solution(index, modulus):
    a, b = 0, 1
    for _ in range(index):
        a, b = b, (a + b) % modulus
    return a % modulus


def input_generator():
    return {"index": random.randint(0, 5000), "modulus": random.randint(2, 1000)}
