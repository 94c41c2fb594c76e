"""Problem Statement:
In how many different ways can the amount `amount` be paid with coins of the denominations in
`coins`, if the order of the coins does not matter and each denomination can be used any number of
times?

Input Output Description:
Input:
    coins (list of int): 1 to 4 distinct denominations between 1 and 20.
    amount (int): 0 <= amount <= 60.
Output:
    return (int): the number of ways.
"""
import random


def main_solution(coins, amount):
    ways = [1] + [0] * amount
    for coin in coins:
        for total in range(coin, amount + 1):
            ways[total] += ways[total - coin]
    return ways[amount]


def input_generator():
    return {"coins": random.sample(range(1, 21), random.randint(1, 4)), "amount": random.randint(0, 60)}
