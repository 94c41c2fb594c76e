"""Problem Statement:
A player rolls `dice` dice and scores their sum. What score does he get?

Input Output Description:
Input:
    dice (int): 1 <= dice <= 5.
Output:
    return (int): the score.
"""
import random


def main_solution(dice):
    return sum(random.randint(1, 6) for _ in range(dice))


def input_generator():
    return {"dice": random.randint(1, 5)}
