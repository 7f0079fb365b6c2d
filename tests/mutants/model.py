from dataclasses import dataclass, field
@dataclass(frozen=True)
class Mutant:
    id: str
    file: str
    find: str
    replace: str
    why: str
    killers: list[str] = field(default_factory=list)
