"""Problem Statement:
The digits of `number` are added up, and the digits of the result again, until one digit is left.
Which digit is it, and how many rounds of adding were needed?

Input Output Description:
Input:
    number (int): 0 <= number <= 10**12.
Output:
    return (list): [digit, rounds].
"""
import random


def main_solution(number):
    rounds = 0
    while number >= 10:
        number = sum(int(d) for d in str(number))
        rounds += 1
    return [number, rounds]


def input_generator():
    return {"number": random.randint(0, 10 ** random.randint(1, 12))}
