"""Problem Statement:
How many prime numbers are there that are less than or equal to `limit`?

Input Output Description:
Input:
    limit (int): the upper bound, 0 <= limit <= 20000.
Output:
    return (int): the number of primes p with p <= limit.
"""
import random


def main_solution(limit):
    if limit < 2:
        return 0
    sieve = [True] * (limit + 1)
    sieve[0] = sieve[1] = False
    for p in range(2, int(limit ** 0.5) + 1):
        if sieve[p]:
            for multiple in range(p * p, limit + 1, p):
                sieve[multiple] = False
    return sum(sieve)


def input_generator():
    return {"limit": random.randint(0, 20000)}
