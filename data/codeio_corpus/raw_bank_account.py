class Account:
    """A bank account that refuses overdrafts."""

    def __init__(self, owner, balance=0):
        self.owner = owner
        self.balance = balance
        self.history = []

    def deposit(self, amount):
        self.balance += amount
        self.history.append(("deposit", amount))

    def withdraw(self, amount):
        if amount > self.balance:
            self.history.append(("refused", amount))
            return False
        self.balance -= amount
        self.history.append(("withdraw", amount))
        return True


if __name__ == "__main__":
    account = Account("ada", 100)
    account.deposit(50)
    account.withdraw(500)
    account.withdraw(30)
    print(account.balance, account.history)
