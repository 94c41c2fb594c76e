"""Problem Statement:
There are `people` people; each pair in `friendships` are friends, and friends of friends belong to
the same group. How many groups are there?

Input Output Description:
Input:
    people (int): 1 <= people <= 12.
    friendships (list of [int, int]): up to 10 pairs of people.
Output:
    return (int): the number of groups.
"""
import random


def main_solution(people, friendships):
    parent = list(range(people))

    def root(x):
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for a, b in friendships:
        parent[root(a)] = root(b)
    return len({root(x) for x in range(people)})


def input_generator():
    people = random.randint(1, 12)
    return {"people": people,
            "friendships": [[random.randrange(people), random.randrange(people)] for _ in range(random.randint(0, 10))]}
