"""A filter plugin found only through ANSIBLE_FILTER_PLUGINS (test_ansible_warm)."""


class FilterModule:
    def filters(self):
        return {"evc_twice": lambda value: value * 2}
