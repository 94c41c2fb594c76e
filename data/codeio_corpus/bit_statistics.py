"""Problem Statement:
Written in binary, how many ones does `number` have, and how long is its longest run of ones?

Input Output Description:
Input:
    number (int): 0 <= number < 2**20.
Output:
    return (dict): {"ones": int, "longest_run": int}.
"""
import random


def main_solution(number):
    bits = bin(number)[2:]
    return {"ones": bits.count("1"), "longest_run": max(len(run) for run in bits.split("0"))}


def input_generator():
    return {"number": random.randint(0, 2 ** 20 - 1)}
