"""A LangChain RAG chain on SmolLM2 whose vector-store retriever (all-MiniLM-L6-v2, offline) is also
FlashBackLLM's re-retriever: batch and astream agree, and re-retrieval shows in the result (the
example test streams SmolLM2 through a chain too)."""

import asyncio

import pytest
from langchain_core.embeddings import Embeddings

pytestmark = pytest.mark.integration

QUESTIONS = ["What does the with statement do?", "How do I raise an exception?"]


class MiniLMEmbeddings(Embeddings):
    """LangChain Embeddings over the real all-MiniLM-L6-v2 (sentence-transformers, on the CPU)."""

    def __init__(self, path):
        from sentence_transformers import SentenceTransformer

        self.model = SentenceTransformer(path, device="cpu")

    def embed_documents(self, texts):
        return self.model.encode(list(texts), normalize_embeddings=True).tolist()

    def embed_query(self, text):
        return self.embed_documents([text])[0]


@pytest.fixture(scope="module")
def retriever(python_docs, minilm_path, smollm2_model):
    from langchain_core.documents import Document
    from langchain_core.vectorstores import InMemoryVectorStore

    from flashback_rag.corpus import Document as Doc, chunk_documents

    chunks = chunk_documents([Doc(title=t, text=x) for t, x in python_docs], smollm2_model[1], 96)
    store = InMemoryVectorStore(embedding=MiniLMEmbeddings(minilm_path))
    store.add_documents([Document(page_content=c["contents"], metadata={"title": c["title"]}, id=str(c["id"]))
                         for c in chunks])
    return store.as_retriever(search_kwargs={"k": 1})


def test_rag_chain_re_retrieves_from_its_own_retriever(retriever, smollm2_model, python_docs):
    from langchain_core.output_parsers import StrOutputParser
    from langchain_core.prompts import PromptTemplate
    from langchain_core.runnables import RunnablePassthrough

    from langchain_flashback import FlashBackLLM

    llm = FlashBackLLM(model=smollm2_model, retriever=retriever, stride=6, query_tokens=24, doc_tokens=64,
                       max_new_tokens=12, ignore_eos=True)
    prompt = PromptTemplate.from_template("{context}\n\nQuestion: {question}\nAnswer:")
    chain = ({"context": retriever | (lambda docs: "\n\n".join(d.page_content for d in docs)),
              "question": RunnablePassthrough()} | prompt | llm | StrOutputParser())

    answers = chain.batch(QUESTIONS)
    assert all(a.strip() for a in answers) and answers[0] != answers[1]

    async def run():
        return [c async for c in chain.astream(QUESTIONS[1])]

    chunks = asyncio.run(run())
    assert len(chunks) > 1 and "".join(chunks) == answers[1]
    result = llm.last_result                     # the astream call: re-retrieval from the vector store
    assert [r.step for r in result.retrievals] == [0, 6]
    topics = {t for t, _ in python_docs}
    assert all(r.passages and r.passages[0].title in topics for r in result.retrievals)
    assert result.retrievals[0].query != result.retrievals[1].query     # the running text is the query
