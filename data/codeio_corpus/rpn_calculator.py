"""Problem Statement:
What is the value of the arithmetic expression `tokens`, written in reverse Polish notation with
the operators +, - and *?

Input Output Description:
Input:
    tokens (list of str): numbers 0..9 and operators, a valid expression of at most 9 tokens.
Output:
    return (int): the value.
"""
import operator
import random


def main_solution(tokens):
    apply = {"+": operator.add, "-": operator.sub, "*": operator.mul}
    stack = []
    for token in tokens:
        if token in apply:
            right, left = stack.pop(), stack.pop()
            stack.append(apply[token](left, right))
        else:
            stack.append(int(token))
    return stack[0]


def input_generator():
    tokens = [str(random.randint(0, 9))]
    for _ in range(random.randint(0, 4)):
        tokens += [str(random.randint(0, 9)), random.choice("+-*")]
    return {"tokens": tokens}
