"""Template-based synthetic Korean -> English markdown translation pairs (training data only).

Every document template exists twice, as a Korean text and its English counterpart with the same
markdown structure (headings, lists, tables, links, images, inline code, fenced code blocks).
Slots are filled from the banks below with one ``random.Random(seed)``, so the same
``(num, seed)`` always yields the same records. Code, URLs and file paths are shared verbatim
between the two sides; prose slots are Korean/English phrase pairs that translate each other.
"""
from __future__ import annotations

import json
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

SYSTEM = (
    "You are a professional technical translator. Translate the user's Korean markdown document "
    "into natural English. Keep the markdown structure exactly as it is: headings, lists, tables, "
    "links, images, inline code and fenced code blocks. Do not translate code, URLs or file paths. "
    "Output only the translated document."
)

STYLES: tuple[str, ...] = ("readme", "tutorial", "api_doc", "blog", "reference", "troubleshooting")

# Markdown element kinds (as named by harness.metrics.markdown) every document of a style contains.
REQUIRED_ELEMENTS: dict[str, tuple[str, ...]] = {
    "readme": ("heading", "code_block", "link", "list_item", "bold"),
    "tutorial": ("heading", "code_block", "inline_code", "link", "list_item", "blockquote"),
    "api_doc": ("heading", "code_block", "inline_code", "table", "list_item"),
    "blog": ("heading", "code_block", "link", "bold", "italic", "blockquote"),
    "reference": ("heading", "table", "inline_code", "list_item", "link"),
    "troubleshooting": ("heading", "code_block", "list_item", "blockquote", "bold"),
}

Pair = tuple[str, str]  # (Korean, English)


# --------------------------------------------------------------------------------------------
# Slot banks
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Project:
    """An invented project: display name, CLI/package name and its ecosystem."""

    name: str
    cli: str
    eco: str  # "python" | "node" | "go" | "rust"


PROJECTS: tuple[Project, ...] = (
    Project("Brisket", "brisket", "python"),
    Project("Cobalt Relay", "cobalt-relay", "go"),
    Project("Driftwood", "driftwood", "rust"),
    Project("Emberline", "emberline", "node"),
    Project("Fernspike", "fernspike", "python"),
    Project("Glacier Sync", "glacier-sync", "go"),
    Project("Hollowmark", "hollowmark", "rust"),
    Project("Inkwell", "inkwell", "node"),
    Project("Juniper Queue", "juniper-queue", "python"),
    Project("Kestrel", "kestrel", "go"),
    Project("Lanternfish", "lanternfish", "rust"),
    Project("Moss Router", "moss-router", "node"),
    Project("Nimbus Lite", "nimbus-lite", "python"),
    Project("Oxbow", "oxbow", "go"),
    Project("Pebblestack", "pebblestack", "rust"),
    Project("Quarry", "quarry", "python"),
)

# (Korean modifier ending in -는, English relative clause) -- "a tool that ..."
PURPOSES: tuple[Pair, ...] = (
    ("여러 서버의 로그를 한곳에 모아 검색하는", "collects logs from many servers in one place and makes them searchable"),
    ("데이터베이스 스키마 변경을 안전하게 적용하는", "applies database schema changes safely"),
    ("대용량 CSV 파일을 빠르게 변환하는", "converts large CSV files quickly"),
    ("쿠버네티스 매니페스트의 오류를 미리 잡아내는", "catches errors in Kubernetes manifests ahead of time"),
    ("GPU 작업을 대기열에 넣고 순서대로 실행하는", "queues GPU jobs and runs them in order"),
    ("API 응답을 캐시해 지연 시간을 줄이는", "caches API responses to reduce latency"),
    ("정적 사이트를 빌드하고 배포하는", "builds and deploys static sites"),
    ("이미지 파일을 일괄로 압축하는", "compresses image files in bulk"),
    ("환경 변수와 시크릿을 안전하게 관리하는", "manages environment variables and secrets securely"),
    ("백그라운드 작업의 실행 이력을 추적하는", "tracks the run history of background jobs"),
)

FEATURES: tuple[Pair, ...] = (
    ("설정 파일 하나로 모든 환경 관리", "Manage every environment with a single config file"),
    ("플러그인으로 기능 확장", "Extend functionality with plugins"),
    ("변경 사항을 미리 보여 주는 dry-run 모드", "A dry-run mode that previews changes"),
    ("JSON 형식의 구조화된 로그 출력", "Structured log output in JSON"),
    ("Linux, macOS, Windows 지원", "Support for Linux, macOS and Windows"),
    ("병렬 처리로 빠른 실행 속도", "Fast execution through parallel processing"),
    ("재시도와 지수 백오프 내장", "Built-in retries with exponential backoff"),
    ("Prometheus 메트릭 기본 제공", "Prometheus metrics out of the box"),
    ("외부 의존성이 없는 단일 바이너리", "A single binary with no external dependencies"),
    ("셸 자동 완성 지원", "Shell completion support"),
)


@dataclass(frozen=True)
class Option:
    """A command-line option with its type, default and description in both languages."""

    flag: str
    type_ko: str
    type_en: str
    default: str
    desc_ko: str
    desc_en: str


OPTIONS: tuple[Option, ...] = (
    Option("--workers", "정수", "integer", "4", "동시에 실행할 작업자 수", "Number of workers to run concurrently"),
    Option("--timeout", "정수", "integer", "30", "요청 제한 시간(초)", "Request timeout (seconds)"),
    Option("--verbose", "불리언", "boolean", "false", "자세한 로그 출력 여부", "Whether to print detailed logs"),
    Option("--output", "문자열", "string", "text", "출력 형식", "Output format"),
    Option("--dry-run", "불리언", "boolean", "false", "실제로 변경하지 않고 계획만 출력", "Print the plan only, without making changes"),
    Option("--retries", "정수", "integer", "3", "실패했을 때 재시도할 횟수", "Number of retries on failure"),
    Option("--cache-dir", "경로", "path", "~/.cache", "캐시를 저장할 디렉터리", "Directory to store the cache in"),
    Option("--region", "문자열", "string", "ap-northeast-2", "사용할 리전", "Region to use"),
    Option("--batch-size", "정수", "integer", "500", "한 번에 처리할 항목 수", "Number of items to process at once"),
    Option("--log-level", "문자열", "string", "info", "로그 상세 수준", "Log verbosity level"),
)

DOC_HOSTS: tuple[str, ...] = ("https://docs.example.com", "https://example.com/docs", "https://example.org/manual")

NOTES: tuple[Pair, ...] = (
    ("운영 환경에 적용하기 전에 반드시 스테이징에서 먼저 확인하세요.", "Always verify on staging before applying it to production."),
    ("설정 파일을 바꾼 뒤에는 프로세스를 다시 시작해야 반영됩니다.", "After changing the config file, you must restart the process for it to take effect."),
    ("토큰은 저장소에 커밋하지 말고 환경 변수로 넘기세요.", "Don't commit tokens to the repository; pass them through environment variables."),
    ("이 기능은 아직 실험 단계라서 다음 버전에서 바뀔 수 있습니다.", "This feature is still experimental and may change in the next version."),
    ("명령줄 옵션은 항상 설정 파일의 값보다 우선합니다.", "Command-line options always take precedence over values in the config file."),
)


@dataclass(frozen=True)
class Endpoint:
    """An HTTP API endpoint for api_doc templates."""

    method: str
    path: str
    summary_ko: str
    summary_en: str
    params: tuple[tuple[str, str, bool, str, str], ...]  # name, type, required, desc_ko, desc_en
    response: str


ENDPOINTS: tuple[Endpoint, ...] = (
    Endpoint("GET", "/v1/projects", "프로젝트 목록 조회", "List projects",
             (("limit", "integer", False, "한 번에 가져올 개수", "Number of items to fetch at once"),
              ("cursor", "string", False, "다음 페이지 커서", "Cursor for the next page")),
             '{\n  "items": [{ "id": "prj_01", "name": "demo" }],\n  "next_cursor": null\n}'),
    Endpoint("POST", "/v1/jobs", "작업 생성", "Create a job",
             (("image", "string", True, "실행할 컨테이너 이미지", "Container image to run"),
              ("gpus", "integer", False, "할당할 GPU 수", "Number of GPUs to allocate"),
              ("priority", "string", False, "작업 우선순위", "Job priority")),
             '{\n  "id": "job_7f3a",\n  "status": "queued"\n}'),
    Endpoint("DELETE", "/v1/tokens/{token_id}", "토큰 폐기", "Revoke a token",
             (("token_id", "string", True, "폐기할 토큰 ID", "ID of the token to revoke"),),
             '{\n  "revoked": true\n}'),
    Endpoint("PATCH", "/v1/users/{user_id}", "사용자 정보 수정", "Update a user",
             (("user_id", "string", True, "수정할 사용자 ID", "ID of the user to update"),
              ("display_name", "string", False, "표시 이름", "Display name"),
              ("locale", "string", False, "언어 설정", "Language setting")),
             '{\n  "id": "usr_42",\n  "display_name": "Minji",\n  "locale": "ko-KR"\n}'),
    Endpoint("GET", "/v1/metrics/usage", "사용량 조회", "Get usage",
             (("from", "string", True, "조회 시작 날짜", "Start date of the query"),
              ("to", "string", True, "조회 종료 날짜", "End date of the query"),
              ("granularity", "string", False, "집계 단위", "Aggregation unit")),
             '{\n  "total_requests": 182034,\n  "period": "2024-05"\n}'),
    Endpoint("POST", "/v1/webhooks", "웹훅 등록", "Register a webhook",
             (("url", "string", True, "이벤트를 받을 주소", "Address to receive events at"),
              ("events", "array", True, "구독할 이벤트 종류", "Event types to subscribe to")),
             '{\n  "id": "whk_19",\n  "secret": "whsec_redacted"\n}'),
)

ERROR_CODES: tuple[tuple[int, str, str, str], ...] = (
    (400, "INVALID_ARGUMENT", "요청 본문의 형식이 잘못됨", "The request body is malformed"),
    (401, "UNAUTHENTICATED", "토큰이 없거나 만료됨", "The token is missing or expired"),
    (403, "PERMISSION_DENIED", "해당 리소스에 대한 권한이 없음", "No permission for the resource"),
    (404, "NOT_FOUND", "리소스가 존재하지 않음", "The resource does not exist"),
    (409, "CONFLICT", "이미 같은 리소스가 있음", "The same resource already exists"),
    (429, "RATE_LIMITED", "요청 한도를 초과함", "The request limit was exceeded"),
)


@dataclass(frozen=True)
class Problem:
    """A troubleshooting case: error text, cause, steps, fix command and a caution."""

    title: str  # the error as it appears; identical in both languages
    log: str
    cause_ko: str  # contains one **bold** phrase
    cause_en: str
    checks: tuple[Pair, ...]
    fix_lang: str
    fix: str
    note_ko: str
    note_en: str


PROBLEMS: tuple[Problem, ...] = (
    Problem("Connection refused", "dial tcp 10.0.3.15:5432: connect: connection refused",
            "대상 포트에서 **아무 프로세스도 대기하고 있지 않을** 때 생깁니다.",
            "It happens when **no process is listening** on the target port.",
            (("서버 프로세스가 실제로 실행 중인지 확인합니다.", "Check that the server process is actually running."),
             ("수신 주소가 `127.0.0.1`로만 묶여 있지 않은지 확인합니다.", "Check that it isn't bound only to `127.0.0.1`."),
             ("방화벽이나 보안 그룹 규칙을 확인합니다.", "Check the firewall or security group rules.")),
            "bash", "ss -ltnp | grep 5432\nsystemctl status postgresql",
            "컨테이너 안에서는 `localhost`가 호스트가 아니라 컨테이너 자신을 가리킵니다.",
            "Inside a container, `localhost` points to the container itself, not to the host."),
    Problem("Permission denied (publickey)", "git@github.com: Permission denied (publickey).\nfatal: Could not read from remote repository.",
            "원격 서버에 등록된 공개 키와 **맞는 개인 키를 찾지 못한** 경우입니다.",
            "This means SSH **could not find a private key matching** the public key registered on the remote server.",
            (("`ssh-agent`에 키가 등록되어 있는지 확인합니다.", "Check whether the key is added to `ssh-agent`."),
             ("GitHub 계정에 공개 키가 올라가 있는지 확인합니다.", "Check whether the public key is uploaded to your GitHub account."),
             ("자세한 로그로 어떤 키를 시도하는지 봅니다.", "Look at the verbose log to see which keys are tried.")),
            "bash", "ssh-add -l\nssh -vT git@github.com",
            "개인 키 파일의 권한이 너무 넓으면 SSH가 그 키를 무시합니다.",
            "If the permissions on the private key file are too open, SSH ignores the key."),
    Problem("OOMKilled", "Last State:  Terminated\n  Reason:    OOMKilled\n  Exit Code: 137",
            "컨테이너가 **메모리 상한을 넘어서** 커널에 의해 강제로 종료되었습니다.",
            "The container **exceeded its memory limit** and was killed by the kernel.",
            (("실제 메모리 사용량을 확인합니다.", "Check the actual memory usage."),
             ("`resources.limits.memory` 값을 늘립니다.", "Increase the value of `resources.limits.memory`."),
             ("메모리 누수가 없는지 프로파일링합니다.", "Profile the app to make sure there is no memory leak.")),
            "bash", "kubectl top pod -l app=worker\nkubectl describe pod -l app=worker | grep -A3 'Last State'",
            "상한만 계속 올리면 근본 원인인 누수를 놓칠 수 있습니다.",
            "If you just keep raising the limit, you may miss a leak that is the root cause."),
    Problem("No matching distribution found", "ERROR: Could not find a version that satisfies the requirement torchvision==0.9.1\nERROR: No matching distribution found for torchvision==0.9.1",
            "지정한 버전이 **현재 Python 버전이나 플랫폼용으로 배포되지 않았을** 때 생깁니다.",
            "It happens when the pinned version **was not published for your Python version or platform**.",
            (("`python --version`으로 인터프리터 버전을 확인합니다.", "Check the interpreter version with `python --version`."),
             ("패키지 색인에서 지원하는 버전 목록을 확인합니다.", "Check the list of supported versions on the package index."),
             ("고정한 버전을 호환되는 버전으로 바꿉니다.", "Change the pin to a compatible version.")),
            "bash", "python --version\npip index versions torchvision",
            "사내 미러를 쓴다면 미러가 최신 상태인지도 확인하세요.",
            "If you use an internal mirror, also check that the mirror is up to date."),
    Problem("address already in use", "Error: listen EADDRINUSE: address already in use :::3000",
            "같은 포트를 **이미 다른 프로세스가 쓰고 있습니다**.",
            "Another process **is already using the same port**.",
            (("포트를 쓰는 프로세스를 찾습니다.", "Find the process that uses the port."),
             ("필요 없는 프로세스라면 종료합니다.", "If you don't need that process, stop it."),
             ("아니면 다른 포트로 실행합니다.", "Otherwise, run on a different port.")),
            "bash", "lsof -i :3000\nPORT=3001 npm run dev",
            "개발 서버를 터미널에서 닫지 않고 창만 닫으면 프로세스가 남아 있을 수 있습니다.",
            "If you close only the window without stopping the dev server, the process may be left running."),
    Problem("x509: certificate signed by unknown authority", "Error response from daemon: Get \"https://registry.internal.example.com/v2/\": x509: certificate signed by unknown authority",
            "레지스트리 인증서를 발급한 **사설 인증 기관을 시스템이 신뢰하지 않습니다**.",
            "The system **does not trust the private certificate authority** that issued the registry certificate.",
            (("사설 CA 인증서를 받습니다.", "Get the private CA certificate."),
             ("시스템 신뢰 저장소에 추가합니다.", "Add it to the system trust store."),
             ("Docker 데몬을 다시 시작합니다.", "Restart the Docker daemon.")),
            "bash", "sudo cp internal-ca.crt /usr/local/share/ca-certificates/\nsudo update-ca-certificates\nsudo systemctl restart docker",
            "검증을 끄는 `insecure-registries` 설정은 임시로만 쓰세요.",
            "Use the `insecure-registries` setting, which turns off verification, only temporarily."),
    Problem("CUDA driver version is insufficient", "RuntimeError: CUDA driver version is insufficient for CUDA runtime version",
            "설치된 NVIDIA 드라이버가 **CUDA 런타임이 요구하는 버전보다 오래되었습니다**.",
            "The installed NVIDIA driver **is older than the version the CUDA runtime requires**.",
            (("`nvidia-smi`로 드라이버 버전을 확인합니다.", "Check the driver version with `nvidia-smi`."),
             ("사용하는 CUDA 버전의 최소 드라이버 요구 사항과 비교합니다.", "Compare it with the minimum driver requirement of your CUDA version."),
             ("드라이버를 올리거나 더 낮은 CUDA 빌드를 설치합니다.", "Upgrade the driver or install a build for an older CUDA.")),
            "bash", "nvidia-smi --query-gpu=driver_version --format=csv\npython -c \"import torch; print(torch.version.cuda)\"",
            "컨테이너를 쓰더라도 드라이버는 호스트의 것을 사용합니다.",
            "Even when you use containers, the driver comes from the host."),
    Problem("lock wait timeout exceeded", "ERROR 1205 (HY000): Lock wait timeout exceeded; try restarting transaction",
            "다른 트랜잭션이 **같은 행의 잠금을 오래 쥐고 있어서** 기다리다 시간이 초과되었습니다.",
            "Another transaction **held a lock on the same row for too long**, so the wait timed out.",
            (("오래 실행 중인 트랜잭션을 찾습니다.", "Find long-running transactions."),
             ("커밋되지 않고 남은 세션이 있는지 확인합니다.", "Check for sessions left without committing."),
             ("배치 작업을 작은 단위로 나눠 커밋합니다.", "Split batch jobs into smaller units and commit each one.")),
            "sql", "SELECT trx_id, trx_started, trx_mysql_thread_id\nFROM information_schema.innodb_trx\nORDER BY trx_started;",
            "대화형 콘솔에서 트랜잭션을 열어 두고 자리를 비우는 것이 의외로 흔한 원인입니다.",
            "A surprisingly common cause is leaving a transaction open in an interactive console and walking away."),
)


@dataclass(frozen=True)
class Story:
    """A blog story: a problem, a before/after number, a code change and a lesson."""

    title_ko: str
    title_en: str
    context_ko: str  # contains one *italic* phrase
    context_en: str
    metric_ko: str  # "X가 A에서 B로" style sentence containing **bold**
    metric_en: str
    lang: str
    code: str
    lesson_ko: str
    lesson_en: str


STORIES: tuple[Story, ...] = (
    Story("느린 API 응답을 인덱스 하나로 고친 이야기", "How One Index Fixed a Slow API",
          "주문 조회 API가 *특정 고객에게서만* 3초 넘게 걸렸습니다.",
          "The order lookup API took more than three seconds *only for certain customers*.",
          "인덱스를 추가한 뒤 p99 지연 시간이 **3.2초에서 45밀리초로** 줄었습니다.",
          "After adding the index, p99 latency dropped **from 3.2 seconds to 45 milliseconds**.",
          "sql", "CREATE INDEX CONCURRENTLY idx_orders_customer_created\n    ON orders (customer_id, created_at DESC);",
          "느린 쿼리는 추측하지 말고 실행 계획부터 보세요.", "Don't guess about slow queries; look at the execution plan first."),
    Story("빌드 캐시로 CI 시간을 절반으로", "Halving CI Time with a Build Cache",
          "의존성 설치에만 *매번 6분씩* 쓰고 있었습니다.",
          "We were spending *six minutes every time* just installing dependencies.",
          "캐시를 적용한 뒤 전체 파이프라인이 **14분에서 7분으로** 줄었습니다.",
          "With the cache in place, the whole pipeline went **from 14 minutes down to 7**.",
          "yaml", "- uses: actions/cache@v4\n  with:\n    path: ~/.cache/pip\n    key: pip-${{ hashFiles('requirements.lock') }}",
          "캐시 키에는 반드시 lock 파일의 해시를 넣으세요.", "Always include the hash of the lock file in the cache key."),
    Story("타임아웃 없는 HTTP 호출이 만든 장애", "The Outage Caused by an HTTP Call Without a Timeout",
          "외부 결제 API가 느려지자 우리 서버의 워커가 *하나도 남김없이* 묶여 버렸습니다.",
          "When an external payment API slowed down, *every last one* of our server's workers got stuck.",
          "타임아웃을 넣은 뒤 같은 상황에서도 에러율이 **40%에서 2% 미만으로** 유지되었습니다.",
          "After adding timeouts, the error rate stayed **under 2% instead of 40%** in the same situation.",
          "python", "resp = requests.post(\n    PAYMENT_URL,\n    json=payload,\n    timeout=(3.05, 10),  # connect, read\n)",
          "모든 네트워크 호출에는 타임아웃이 있어야 합니다.", "Every network call needs a timeout."),
    Story("배치 크기 하나 바꿨을 뿐인데", "All We Did Was Change the Batch Size",
          "야간 적재 작업이 *해가 뜰 때까지* 끝나지 않는 날이 늘었습니다.",
          "More and more often, the nightly load job was still running *when the sun came up*.",
          "한 번에 넣는 행 수를 늘리자 적재 시간이 **5시간에서 50분으로** 줄었습니다.",
          "Once we inserted more rows at a time, the load time dropped **from 5 hours to 50 minutes**.",
          "python", "for chunk in batched(rows, 5000):\n    cur.executemany(INSERT_SQL, chunk)\n    conn.commit()",
          "행 단위 커밋은 편하지만 대량 작업에서는 치명적으로 느립니다.", "Committing row by row is convenient but fatally slow for bulk work."),
    Story("컨테이너 이미지 크기 다이어트", "Putting Our Container Images on a Diet",
          "이미지가 커서 새 노드에서 파드가 뜨는 데 *2분 가까이* 걸렸습니다.",
          "Our images were so big that pods took *nearly two minutes* to start on a new node.",
          "멀티 스테이지 빌드로 바꾸자 이미지가 **900MB에서 60MB로** 줄었습니다.",
          "Switching to a multi-stage build shrank the image **from 900MB to 60MB**.",
          "dockerfile", "FROM python:3.12-slim AS runtime\nCOPY --from=build /app/.venv /app/.venv\nENV PATH=/app/.venv/bin:$PATH\nCMD [\"python\", \"-m\", \"app\"]",
          "런타임 이미지에는 실행에 필요한 것만 남기세요.", "Keep only what is needed to run in the runtime image."),
    Story("GPU 사용률 30%의 비밀", "The Mystery of 30% GPU Utilization",
          "비싼 GPU를 빌려 놓고 사용률은 *고작 30%* 남짓이었습니다.",
          "We had rented expensive GPUs, yet utilization was *a mere 30%* or so.",
          "데이터 로더를 고친 뒤 GPU 사용률이 **30%에서 92%로** 올라갔습니다.",
          "After fixing the data loader, GPU utilization rose **from 30% to 92%**.",
          "python", "loader = DataLoader(\n    dataset,\n    batch_size=64,\n    num_workers=8,\n    pin_memory=True,\n    persistent_workers=True,\n)",
          "GPU가 놀고 있다면 먼저 입력 파이프라인을 의심하세요.", "If the GPU is idle, suspect the input pipeline first."),
)

# Short (Korean, English) intro/closing lines for blog posts.
BLOG_OPENERS: tuple[Pair, ...] = (
    ("이번 글에서는 최근에 겪은 문제와 해결 과정을 공유합니다.", "In this post, I'll share a problem we ran into recently and how we solved it."),
    ("팀 내부 회고를 정리해 블로그에도 올립니다.", "I'm posting a cleaned-up version of our team's internal retrospective on the blog as well."),
    ("비슷한 문제를 겪는 분들께 도움이 되었으면 합니다.", "I hope this helps anyone running into a similar problem."),
)


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------


def fence(lang: str, code: str) -> str:
    """A fenced code block with a language tag."""
    return f"```{lang}\n{code}\n```"


def install_cmd(p: Project) -> tuple[str, str]:
    """(language tag, install command) for a project's ecosystem."""
    return {
        "python": ("bash", f"pip install {p.cli}"),
        "node": ("bash", f"npm install --save {p.cli}"),
        "go": ("bash", f"go install github.com/example-org/{p.cli}/cmd/{p.cli}@latest"),
        "rust": ("bash", f"cargo install {p.cli}"),
    }[p.eco]


def usage_snippet(p: Project, url: str) -> tuple[str, str]:
    """(language tag, library usage example) for a project's ecosystem."""
    mod = p.cli.replace("-", "_")
    if p.eco == "python":
        return "python", f'from {mod} import Client\n\nclient = Client(endpoint="{url}")\nprint(client.status())'
    if p.eco == "node":
        return "javascript", f'import {{ Client }} from "{p.cli}";\n\nconst client = new Client({{ endpoint: "{url}" }});\nconsole.log(await client.status());'
    if p.eco == "go":
        return "go", f'client, err := {mod}.NewClient("{url}")\nif err != nil {{\n    log.Fatal(err)\n}}\nfmt.Println(client.Status())'
    return "rust", f'let client = {mod}::Client::new("{url}")?;\nprintln!("{{:?}}", client.status()?);'


def env_name(p: Project, opt: Option) -> str:
    """The environment variable that mirrors a CLI option."""
    return (p.cli + "_" + opt.flag.lstrip("-")).upper().replace("-", "_")


def repo_url(p: Project) -> str:
    """The project's (example) GitHub URL."""
    return f"https://github.com/example-org/{p.cli}"


def doc_url(rng: random.Random, p: Project, page: str) -> str:
    """An example documentation URL for a project page."""
    return f"{rng.choice(DOC_HOSTS)}/{p.cli}/{page}"


def maybe_image(rng: random.Random, p: Project, alt: Pair) -> Pair:
    """An image line pair (about one document in four), else two empty strings."""
    if rng.random() < 0.25:
        url = f"https://example.com/assets/{p.cli}/{rng.choice(['overview', 'diagram', 'screenshot', 'flow'])}.png"
        return f"\n![{alt[0]}]({url})\n", f"\n![{alt[1]}]({url})\n"
    return "", ""


def bullets(items: Iterable[Pair], ordered: bool = False) -> Pair:
    """Render (ko, en) items as a bullet or numbered list in both languages."""
    ko, en = [], []
    for i, (k, e) in enumerate(items, 1):
        mark = f"{i}." if ordered else "-"
        ko.append(f"{mark} {k}")
        en.append(f"{mark} {e}")
    return "\n".join(ko), "\n".join(en)


def option_table(opts: list[Option], with_type: bool) -> Pair:
    """A markdown table of options in both languages."""
    if with_type:
        ko = ["| 옵션 | 타입 | 기본값 | 설명 |", "| --- | --- | --- | --- |"]
        en = ["| Option | Type | Default | Description |", "| --- | --- | --- | --- |"]
        for o in opts:
            ko.append(f"| `{o.flag}` | {o.type_ko} | `{o.default}` | {o.desc_ko} |")
            en.append(f"| `{o.flag}` | {o.type_en} | `{o.default}` | {o.desc_en} |")
    else:
        ko = ["| 옵션 | 설명 |", "| --- | --- |"]
        en = ["| Option | Description |", "| --- | --- |"]
        for o in opts:
            ko.append(f"| `{o.flag}` | {o.desc_ko} |")
            en.append(f"| `{o.flag}` | {o.desc_en} |")
    return "\n".join(ko), "\n".join(en)


Template = Callable[[random.Random], Pair]


# --------------------------------------------------------------------------------------------
# readme
# --------------------------------------------------------------------------------------------


def readme_basic(rng: random.Random) -> Pair:
    """Project README: intro, features, install, usage, links."""
    p = rng.choice(PROJECTS)
    pk, pe = rng.choice(PURPOSES)
    feats = bullets(rng.sample(FEATURES, rng.randint(2, 4)))
    lang, cmd = install_cmd(p)
    url = doc_url(rng, p, "getting-started")
    img = maybe_image(rng, p, ("실행 화면", "Screenshot of it running"))
    ko = f"""# {p.name}

**{p.name}** 프로젝트는 {pk} 도구입니다.

## 주요 기능

{feats[0]}

## 설치

{fence(lang, cmd)}
{img[0]}
자세한 사용법은 [시작 가이드]({url})를 참고하세요. 버그는 [이슈 트래커]({repo_url(p)}/issues)에 남겨 주세요."""
    en = f"""# {p.name}

**{p.name}** is a tool that {pe}.

## Key features

{feats[1]}

## Installation

{fence(lang, cmd)}
{img[1]}
For detailed usage, see the [getting started guide]({url}). Please report bugs on the [issue tracker]({repo_url(p)}/issues)."""
    return ko, en


def readme_library(rng: random.Random) -> Pair:
    """Library README with a quick start code sample and a license section."""
    p = rng.choice(PROJECTS)
    pk, pe = rng.choice(PURPOSES)
    lang, cmd = install_cmd(p)
    slang, snippet = usage_snippet(p, f"https://api.example.com/{p.cli}")
    feats = bullets(rng.sample(FEATURES, rng.randint(2, 3)))
    license_ = rng.choice(["MIT", "Apache-2.0", "BSD-3-Clause"])
    ko = f"""# {p.name}

{pk} 라이브러리입니다. **{p.name}** 하나로 복잡한 설정 없이 바로 시작할 수 있습니다.

{feats[0]}

## 빠른 시작

{fence(lang, cmd)}

{fence(slang, snippet)}

## 라이선스

{license_} 라이선스로 배포됩니다. 기여 방법은 [CONTRIBUTING.md]({repo_url(p)}/blob/main/CONTRIBUTING.md)를 읽어 주세요."""
    en = f"""# {p.name}

A library that {pe}. With **{p.name}** alone, you can get started right away without complicated setup.

{feats[1]}

## Quick start

{fence(lang, cmd)}

{fence(slang, snippet)}

## License

Distributed under the {license_} license. To learn how to contribute, please read [CONTRIBUTING.md]({repo_url(p)}/blob/main/CONTRIBUTING.md)."""
    return ko, en


def readme_cli(rng: random.Random) -> Pair:
    """CLI tool README with a command list and requirements."""
    p = rng.choice(PROJECTS)
    pk, pe = rng.choice(PURPOSES)
    lang, cmd = install_cmd(p)
    subs = rng.sample([("init", "새 설정 파일 생성", "Create a new config file"),
                       ("run", "작업 실행", "Run the job"),
                       ("status", "현재 상태 확인", "Check the current status"),
                       ("clean", "임시 파일 정리", "Clean up temporary files"),
                       ("doctor", "환경 점검", "Check the environment")], 3)
    cmds = bullets([(f"`{p.cli} {s}`: {k}", f"`{p.cli} {s}`: {e}") for s, k, e in subs])
    ver = rng.choice(["3.10", "3.11", "18", "20", "1.21", "1.22"])
    ko = f"""# {p.name}

{pk} 명령줄 도구입니다.

## 요구 사항

- **{p.eco}** 런타임 {ver} 이상

## 설치

{fence(lang, cmd)}

## 명령어

{cmds[0]}

소스 코드는 [GitHub]({repo_url(p)})에 있습니다."""
    en = f"""# {p.name}

A command-line tool that {pe}.

## Requirements

- **{p.eco}** runtime {ver} or later

## Installation

{fence(lang, cmd)}

## Commands

{cmds[1]}

The source code is on [GitHub]({repo_url(p)})."""
    return ko, en


# --------------------------------------------------------------------------------------------
# tutorial
# --------------------------------------------------------------------------------------------


def tutorial_first_steps(rng: random.Random) -> Pair:
    """Step-by-step first-use tutorial."""
    p = rng.choice(PROJECTS)
    lang, cmd = install_cmd(p)
    opt = rng.choice(OPTIONS)
    note = rng.choice(NOTES)
    cfg = f"{p.cli}.toml"
    url = doc_url(rng, p, "advanced")
    ko = f"""# {p.name} 처음 시작하기

이 튜토리얼에서는 `{p.cli}` 패키지를 설치하고 첫 작업을 실행해 봅니다.

## 1단계: 설치

{fence(lang, cmd)}

## 2단계: 설정 파일 만들기

프로젝트 루트에 `{cfg}` 파일을 만듭니다.

{fence("bash", f"{p.cli} init > {cfg}")}

## 3단계: 실행

1. 설정을 확인합니다.
2. `{opt.flag}` 옵션을 붙여 실행합니다.

> {note[0]}

다음 단계는 [고급 가이드]({url})에서 이어집니다."""
    en = f"""# Getting Started with {p.name}

In this tutorial, we'll install the `{p.cli}` package and run a first job.

## Step 1: Install

{fence(lang, cmd)}

## Step 2: Create a config file

Create a `{cfg}` file in the project root.

{fence("bash", f"{p.cli} init > {cfg}")}

## Step 3: Run

1. Check the configuration.
2. Run it with the `{opt.flag}` option.

> {note[1]}

The next steps continue in the [advanced guide]({url})."""
    return ko, en


def tutorial_library(rng: random.Random) -> Pair:
    """Tutorial for using a project as a library from code."""
    p = rng.choice(PROJECTS)
    lang, cmd = install_cmd(p)
    endpoint = f"https://api.example.com/{p.cli}"
    slang, snippet = usage_snippet(p, endpoint)
    img = maybe_image(rng, p, ("요청 흐름", "Request flow"))
    env = f"{p.cli.upper().replace('-', '_')}_TOKEN"
    url = doc_url(rng, p, "api")
    ko = f"""# 코드에서 {p.name} 사용하기

## 준비

- 설치가 끝난 `{p.cli}` 패키지
- 발급받은 API 토큰 (`{env}` 환경 변수에 저장)

{fence(lang, cmd)}

## 클라이언트 만들기

아래 코드는 서버에 연결해 상태를 출력합니다.

{fence(slang, snippet)}
{img[0]}
> 토큰이 없으면 `401` 오류가 반환됩니다.

전체 API는 [레퍼런스]({url})에서 확인하세요."""
    en = f"""# Using {p.name} from Code

## Prerequisites

- The `{p.cli}` package, installed
- An issued API token (stored in the `{env}` environment variable)

{fence(lang, cmd)}

## Creating a client

The code below connects to the server and prints its status.

{fence(slang, snippet)}
{img[1]}
> Without a token, a `401` error is returned.

See the [reference]({url}) for the full API."""
    return ko, en


def tutorial_deploy(rng: random.Random) -> Pair:
    """Tutorial for deploying a project with Docker."""
    p = rng.choice(PROJECTS)
    port = rng.choice([8080, 8000, 3000, 9090])
    opts = rng.sample(OPTIONS, 2)
    note = rng.choice(NOTES)
    url = doc_url(rng, p, "deploy")
    run = f"docker compose up -d\ncurl http://localhost:{port}/healthz"
    compose = (f"services:\n  {p.cli}:\n    image: ghcr.io/example-org/{p.cli}:latest\n"
               f"    ports:\n      - \"{port}:{port}\"\n    environment:\n"
               + "".join(f"      {env_name(p, o)}: \"{o.default}\"\n" for o in opts)).rstrip("\n")
    ko = f"""# Docker Compose로 {p.name} 배포하기

## 1. compose 파일 작성

`docker-compose.yml`을 다음과 같이 작성합니다.

{fence("yaml", compose)}

## 2. 실행

{fence("bash", run)}

## 확인할 점

- `{env_name(p, opts[0])}`: {opts[0].desc_ko}
- `{env_name(p, opts[1])}`: {opts[1].desc_ko}

> {note[0]}

배포 옵션은 [운영 문서]({url})에 더 있습니다."""
    en = f"""# Deploying {p.name} with Docker Compose

## 1. Write the compose file

Write `docker-compose.yml` as follows.

{fence("yaml", compose)}

## 2. Run it

{fence("bash", run)}

## Things to check

- `{env_name(p, opts[0])}`: {opts[0].desc_en}
- `{env_name(p, opts[1])}`: {opts[1].desc_en}

> {note[1]}

There are more deployment options in the [operations docs]({url})."""
    return ko, en


# --------------------------------------------------------------------------------------------
# api_doc
# --------------------------------------------------------------------------------------------


def _param_table(ep: Endpoint) -> Pair:
    """Parameter table of an endpoint in both languages."""
    ko = ["| 이름 | 타입 | 필수 | 설명 |", "| --- | --- | --- | --- |"]
    en = ["| Name | Type | Required | Description |", "| --- | --- | --- | --- |"]
    for name, typ, req, dk, de in ep.params:
        ko.append(f"| `{name}` | {typ} | {'예' if req else '아니요'} | {dk} |")
        en.append(f"| `{name}` | {typ} | {'Yes' if req else 'No'} | {de} |")
    return "\n".join(ko), "\n".join(en)


def api_endpoint(rng: random.Random) -> Pair:
    """One endpoint: parameters, example request, response, notes."""
    ep = rng.choice(ENDPOINTS)
    host = rng.choice(["https://api.example.com", "https://api.example.org", "https://example.com/api"])
    table = _param_table(ep)
    req = f"curl -X {ep.method} \"{host}{ep.path}\" \\\n  -H \"Authorization: Bearer $API_TOKEN\""
    ko = f"""# {ep.method} {ep.path}

{ep.summary_ko} API입니다.

## 매개변수

{table[0]}

## 요청 예시

{fence("bash", req)}

## 응답

{fence("json", ep.response)}

- 인증에는 `Authorization` 헤더가 필요합니다.
- 성공하면 `200`을 반환합니다."""
    en = f"""# {ep.method} {ep.path}

This is the API to {ep.summary_en[0].lower() + ep.summary_en[1:]}.

## Parameters

{table[1]}

## Example request

{fence("bash", req)}

## Response

{fence("json", ep.response)}

- Authentication requires the `Authorization` header.
- On success, it returns `200`."""
    return ko, en


def api_errors(rng: random.Random) -> Pair:
    """Error code table with an example error body."""
    codes = sorted(rng.sample(ERROR_CODES, rng.randint(3, 5)))
    pick = rng.choice(codes)
    rows_ko = "\n".join(f"| {s} | `{c}` | {k} |" for s, c, k, _ in codes)
    rows_en = "\n".join(f"| {s} | `{c}` | {e} |" for s, c, _, e in codes)
    body = f'{{\n  "error": {{\n    "code": "{pick[1]}",\n    "status": {pick[0]}\n  }}\n}}'
    retries = rng.randint(2, 5)
    ko = f"""# 오류 응답

모든 오류는 같은 형식의 JSON 본문으로 반환됩니다.

{fence("json", body)}

## 오류 코드

| 상태 | 코드 | 의미 |
| --- | --- | --- |
{rows_ko}

## 처리 방법

- `error.code` 값으로 분기하세요.
- `5xx` 오류는 최대 {retries}회까지 재시도해도 안전합니다."""
    en = f"""# Error Responses

Every error is returned with a JSON body of the same shape.

{fence("json", body)}

## Error codes

| Status | Code | Meaning |
| --- | --- | --- |
{rows_en}

## How to handle them

- Branch on the value of `error.code`.
- It is safe to retry `5xx` errors up to {retries} times."""
    return ko, en


def api_auth(rng: random.Random) -> Pair:
    """Authentication section: token request, header use, scopes."""
    host = rng.choice(["https://auth.example.com", "https://example.com/oauth", "https://id.example.org"])
    scopes = rng.sample([("read:projects", "프로젝트 읽기", "Read projects"),
                         ("write:projects", "프로젝트 수정", "Modify projects"),
                         ("read:usage", "사용량 조회", "View usage"),
                         ("admin", "모든 권한", "Full access")], 3)
    ttl = rng.choice([15, 30, 60])
    req = (f"curl -X POST {host}/token \\\n  -d grant_type=client_credentials \\\n"
           f"  -d client_id=$CLIENT_ID -d client_secret=$CLIENT_SECRET")
    ko = f"""# 인증

API를 호출하려면 먼저 액세스 토큰을 발급받아야 합니다.

## 토큰 발급

{fence("bash", req)}

발급된 토큰은 {ttl}분 동안 유효하며, `Authorization: Bearer <token>` 헤더로 보냅니다.

## 범위

| 범위 | 권한 |
| --- | --- |
""" + "\n".join(f"| `{s}` | {k} |" for s, k, _ in scopes) + """

- 필요한 최소 범위만 요청하세요.
- 토큰이 만료되면 `401`이 반환됩니다."""
    en = f"""# Authentication

To call the API, you must first obtain an access token.

## Getting a token

{fence("bash", req)}

The issued token is valid for {ttl} minutes and is sent in the `Authorization: Bearer <token>` header.

## Scopes

| Scope | Permission |
| --- | --- |
""" + "\n".join(f"| `{s}` | {e} |" for s, _, e in scopes) + """

- Request only the minimum scopes you need.
- When the token expires, `401` is returned."""
    return ko, en


# --------------------------------------------------------------------------------------------
# blog
# --------------------------------------------------------------------------------------------


def blog_story(rng: random.Random) -> Pair:
    """Problem -> change -> result post."""
    s = rng.choice(STORIES)
    op = rng.choice(BLOG_OPENERS)
    p = rng.choice(PROJECTS)
    img = maybe_image(rng, p, ("변경 전후 비교 그래프", "Before-and-after comparison graph"))
    link = f"https://example.com/blog/{p.cli}-{rng.randint(100, 999)}"
    ko = f"""# {s.title_ko}

{op[0]}

## 문제

{s.context_ko}

## 변경 내용

{fence(s.lang, s.code)}

## 결과

{s.metric_ko}
{img[0]}
> {s.lesson_ko}

관련 내용은 [이전 글]({link})에서도 다뤘습니다."""
    en = f"""# {s.title_en}

{op[1]}

## The problem

{s.context_en}

## The change

{fence(s.lang, s.code)}

## Results

{s.metric_en}
{img[1]}
> {s.lesson_en}

I also covered this in a [previous post]({link})."""
    return ko, en


def blog_lessons(rng: random.Random) -> Pair:
    """A post built around a list of lessons learned."""
    s = rng.choice(STORIES)
    p = rng.choice(PROJECTS)
    ko = f"""# {p.name} 팀 회고: {s.title_ko}

{s.context_ko} 원인을 찾기까지 **꼬박 이틀**이 걸렸습니다.

> {s.lesson_ko}

## 핵심 수정

{fence(s.lang, s.code)}

{s.metric_ko} 자세한 수치는 [대시보드 스냅샷]({repo_url(p)}/wiki/retro)에 남겨 두었습니다."""
    en = f"""# {p.name} Team Retrospective: {s.title_en}

{s.context_en} It took **two full days** to find the cause.

> {s.lesson_en}

## The key fix

{fence(s.lang, s.code)}

{s.metric_en} I've left the detailed numbers in a [dashboard snapshot]({repo_url(p)}/wiki/retro)."""
    return ko, en


def blog_tool_intro(rng: random.Random) -> Pair:
    """A post introducing a tool the team adopted."""
    p = rng.choice(PROJECTS)
    pk, pe = rng.choice(PURPOSES)
    lang, cmd = install_cmd(p)
    feats = bullets(rng.sample(FEATURES, 2))
    ko = f"""# 우리 팀이 {p.name} 도구를 도입한 이유

{p.name} 프로젝트는 {pk} 도구입니다. 처음에는 *반신반의했지만*, 한 달 써 보니 이제는 없으면 불편합니다.

## 마음에 든 점

{feats[0]}

## 설치

{fence(lang, cmd)}

> 가장 큰 장점은 **팀 전체가 같은 방식으로** 일하게 된다는 점입니다.

더 궁금하다면 [공식 저장소]({repo_url(p)})를 둘러보세요."""
    en = f"""# Why Our Team Adopted {p.name}

{p.name} is a tool that {pe}. *We were skeptical at first*, but after using it for a month we'd miss it if it were gone.

## What we liked

{feats[1]}

## Installation

{fence(lang, cmd)}

> The biggest advantage is that **the whole team works the same way**.

If you want to know more, have a look at the [official repository]({repo_url(p)})."""
    return ko, en


# --------------------------------------------------------------------------------------------
# reference
# --------------------------------------------------------------------------------------------


def reference_options(rng: random.Random) -> Pair:
    """CLI option table with notes."""
    p = rng.choice(PROJECTS)
    opts = rng.sample(OPTIONS, rng.randint(3, 6))
    table = option_table(opts, with_type=rng.random() < 0.5)
    o = opts[0]
    img = maybe_image(rng, p, ("옵션 적용 순서", "Order in which options are applied"))
    url = doc_url(rng, p, "cli")
    ko = f"""# {p.cli} 명령줄 옵션

## 옵션 목록

{table[0]}

## 참고

- 모든 옵션은 같은 이름의 환경 변수로도 지정할 수 있습니다. 예: `{env_name(p, o)}`
- 알 수 없는 옵션을 넘기면 종료 코드 `2`로 끝납니다.
{img[0]}
전체 목록은 [CLI 문서]({url})를 참고하세요."""
    en = f"""# {p.cli} Command-Line Options

## Option list

{table[1]}

## Notes

- Every option can also be set through an environment variable of the same name. Example: `{env_name(p, o)}`
- Passing an unknown option exits with code `2`.
{img[1]}
For the full list, see the [CLI documentation]({url})."""
    return ko, en


def reference_env(rng: random.Random) -> Pair:
    """Environment variable table."""
    p = rng.choice(PROJECTS)
    opts = rng.sample(OPTIONS, rng.randint(3, 5))
    rows_ko = "\n".join(f"| `{env_name(p, o)}` | `{o.default}` | {o.desc_ko} |" for o in opts)
    rows_en = "\n".join(f"| `{env_name(p, o)}` | `{o.default}` | {o.desc_en} |" for o in opts)
    note = rng.choice(NOTES)
    url = doc_url(rng, p, "configuration")
    ko = f"""# {p.name} 환경 변수

| 변수 | 기본값 | 설명 |
| --- | --- | --- |
{rows_ko}

- {note[0]}
- 값이 비어 있으면 기본값이 사용됩니다.

설정 파일과의 우선순위는 [설정 문서]({url})에 정리되어 있습니다."""
    en = f"""# {p.name} Environment Variables

| Variable | Default | Description |
| --- | --- | --- |
{rows_en}

- {note[1]}
- If a value is empty, the default is used.

Precedence relative to the config file is described in the [configuration docs]({url})."""
    return ko, en


def reference_config_file(rng: random.Random) -> Pair:
    """Config file keys with a sample file."""
    p = rng.choice(PROJECTS)
    opts = rng.sample(OPTIONS, rng.randint(2, 4))
    keys = [o.flag.lstrip("-").replace("-", "_") for o in opts]
    sample = "\n".join(
        f"{k} = {o.default}" if o.type_en in ("integer", "boolean") else f'{k} = "{o.default}"'
        for k, o in zip(keys, opts)
    )
    rows_ko = "\n".join(f"| `{k}` | {o.type_ko} | {o.desc_ko} |" for k, o in zip(keys, opts))
    rows_en = "\n".join(f"| `{k}` | {o.type_en} | {o.desc_en} |" for k, o in zip(keys, opts))
    path = f"~/.config/{p.cli}/config.toml"
    url = f"{repo_url(p)}/blob/main/examples/config.toml"
    ko = f"""# 설정 파일 레퍼런스

`{p.cli}` 명령은 시작할 때 `{path}` 파일을 읽습니다.

{fence("toml", sample)}

## 키

| 키 | 타입 | 설명 |
| --- | --- | --- |
{rows_ko}

1. 명령줄 옵션
2. 환경 변수
3. 설정 파일

위 순서대로 우선 적용됩니다. [예제 파일]({url})도 참고하세요."""
    en = f"""# Config File Reference

On startup, the `{p.cli}` command reads the `{path}` file.

{fence("toml", sample)}

## Keys

| Key | Type | Description |
| --- | --- | --- |
{rows_en}

1. Command-line options
2. Environment variables
3. Config file

They take precedence in the order above. See also the [example file]({url})."""
    return ko, en


# --------------------------------------------------------------------------------------------
# troubleshooting
# --------------------------------------------------------------------------------------------


def trouble_standard(rng: random.Random) -> Pair:
    """Symptom / cause / numbered fix steps / caution."""
    pr = rng.choice(PROBLEMS)
    steps = bullets(pr.checks, ordered=True)
    ko = f"""# 문제 해결: {pr.title}

## 증상

{fence("text", pr.log)}

## 원인

{pr.cause_ko}

## 해결 방법

{steps[0]}

{fence(pr.fix_lang, pr.fix)}

> {pr.note_ko}"""
    en = f"""# Troubleshooting: {pr.title}

## Symptoms

{fence("text", pr.log)}

## Cause

{pr.cause_en}

## Solution

{steps[1]}

{fence(pr.fix_lang, pr.fix)}

> {pr.note_en}"""
    return ko, en


def trouble_faq(rng: random.Random) -> Pair:
    """FAQ-style entry with a bullet checklist."""
    pr = rng.choice(PROBLEMS)
    p = rng.choice(PROJECTS)
    checks = bullets(rng.sample(pr.checks, rng.randint(2, 3)))
    img = maybe_image(rng, p, ("점검 순서", "Order of checks"))
    ko = f"""# {p.name} 실행 중 "{pr.title}" 오류가 나요

로그에 다음과 같은 메시지가 보인다면 이 문서를 따라 하세요.

{fence("text", pr.log)}

{pr.cause_ko}

## 점검 목록

{checks[0]}
{img[0]}
> {pr.note_ko}

## 그래도 안 된다면

{fence(pr.fix_lang, pr.fix)}

위 명령의 출력을 첨부해 [이슈]({repo_url(p)}/issues/new)를 열어 주세요."""
    en = f"""# I Get a "{pr.title}" Error When Running {p.name}

If you see a message like the following in the logs, follow this document.

{fence("text", pr.log)}

{pr.cause_en}

## Checklist

{checks[1]}
{img[1]}
> {pr.note_en}

## If it still doesn't work

{fence(pr.fix_lang, pr.fix)}

Please open an [issue]({repo_url(p)}/issues/new) with the output of the commands above attached."""
    return ko, en


def trouble_quick(rng: random.Random) -> Pair:
    """Short quick-fix note."""
    pr = rng.choice(PROBLEMS)
    first = pr.checks[0]
    ko = f"""## {pr.title}

{pr.cause_ko}

- {first[0]}
- 아래 명령으로 상태를 확인합니다.

{fence(pr.fix_lang, pr.fix)}

> **주의:** {pr.note_ko}"""
    en = f"""## {pr.title}

{pr.cause_en}

- {first[1]}
- Check the state with the commands below.

{fence(pr.fix_lang, pr.fix)}

> **Caution:** {pr.note_en}"""
    return ko, en


TEMPLATES: dict[str, tuple[Template, ...]] = {
    "readme": (readme_basic, readme_library, readme_cli),
    "tutorial": (tutorial_first_steps, tutorial_library, tutorial_deploy),
    "api_doc": (api_endpoint, api_errors, api_auth),
    "blog": (blog_story, blog_lessons, blog_tool_intro),
    "reference": (reference_options, reference_env, reference_config_file),
    "troubleshooting": (trouble_standard, trouble_faq, trouble_quick),
}


# --------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------


def make_record(rid: str, style: str, ko: str, en: str) -> dict:
    """A chat-messages record in the ko_md_translation format."""
    return {
        "id": rid,
        "style": style,
        "messages": [
            {"role": "system", "content": SYSTEM},
            {"role": "user", "content": ko.strip()},
            {"role": "assistant", "content": en.strip()},
        ],
    }


def generate_pairs(num: int, seed: int) -> list[dict]:
    """Generate ``num`` synthetic Korean->English markdown records, deterministic in ``seed``.

    Styles rotate through a seed-shuffled order of ``STYLES`` so every style appears once
    ``num >= 6``; the template and all slots are drawn from ``random.Random(seed)``.
    """
    rng = random.Random(seed)
    order = list(STYLES)
    rng.shuffle(order)
    records: list[dict] = []
    for n in range(1, num + 1):
        style = order[(n - 1) % len(order)]
        template = rng.choice(TEMPLATES[style])
        ko, en = template(rng)
        records.append(make_record(f"md-synth-{seed}-{n}", style, ko, en))
    return records


def write_jsonl(records: Iterable[dict], path: str | Path) -> Path:
    """Write records as UTF-8 JSON lines (``ensure_ascii=False``); return the path."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", encoding="utf-8") as fh:
        for rec in records:
            fh.write(json.dumps(rec, ensure_ascii=False) + "\n")
    return out
